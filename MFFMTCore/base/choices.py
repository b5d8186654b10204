"""The named choices of the network, the data pipeline and the training recipe, one tuple each.

The code that implements a choice (the network, the sample maker, the transforms, the optimiser
builder), ``mffmt train``'s options (:mod:`MFFMTCore.base.train_options`) and the Slicer module all
read these tuples, so a new choice is added here once.
"""

from __future__ import annotations

#: Backbones of MFFMT: MFFMT18 and MFFMT50 (the layouts are in :mod:`MFFMTCore.network.backbone`).
BACKBONES = ("resnet18", "resnet50")
#: Feature fusion of the network: the paper's MFF, or the ablations' sum and concatenation.
FUSION_CHOICES = ("mff", "sum", "concat")
#: ``auto``: a BI-RADS head when the training records carry BI-RADS; ``none``: never.
AUX_MODES = ("auto", "none")
#: Training samples: whole frames, or one crop per lesion box (the paper's protocol).
SAMPLE_MODES = ("frame", "lesion")
#: Training augmentations (see :func:`MFFMTCore.data.transforms.augmentation_transforms`).
AUGMENTATIONS = ("paper", "lateral", "scanner")
OPTIMIZERS = ("adam", "adamw")
#: Learning-rate schedules after the warm-up.
SCHEDULES = ("constant", "cosine")
#: Arithmetic of the training forward pass; ``auto`` is bf16 where the processor computes it natively.
PRECISIONS = ("fp32", "bf16", "auto")
#: How a training run chooses its best epoch (``--select``).
SELECTIONS = ("auc", "loss")
