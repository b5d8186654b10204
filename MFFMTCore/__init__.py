"""MFFMTCore: the MFFMT network for breast-ultrasound lesion segmentation and classification.

Usable without 3D Slicer. Sub-packages:

- ``MFFMTCore.network``: the MFFMT network and its building blocks (Wei et al., Curr. Oncol. 2024).
- ``MFFMTCore.data``: dataset readers (BUSI, BUS-BRA, datalists), splits and MONAI transforms.
- ``MFFMTCore.training``: the trainer, checkpoints and progress reporting.
- ``MFFMTCore.evaluation``: metrics and pictures (ROC curve, confusion matrix).
- ``MFFMTCore.inference``: the ``Predictor`` for frames and clips, and result writers.
- ``MFFMTCore.model_file``: the versioned model package (safetensors + metadata).
"""

from MFFMTCore.version import __version__

__all__ = ["__version__"]
