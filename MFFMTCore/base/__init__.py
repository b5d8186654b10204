"""The torch-free layer of MFFMTCore: what the network code and the Slicer module both need.

Everything here imports only NumPy, SimpleITK and SciPy, and of MFFMTCore only ``errors``, ``files``
and ``version`` (which import nothing above them; never torch or MONAI), so that the Slicer module can
use it in Slicer's own Python before the network's packages are installed:

- :mod:`~MFFMTCore.base.geometry`: image geometry, RAS/LPS, pixel area, which files record a spacing;
- :mod:`~MFFMTCore.base.roi`: regions of interest in pixels and in physical space;
- :mod:`~MFFMTCore.base.components`: lesion measurement (connected components, area, centroid);
- :mod:`~MFFMTCore.base.results_schema`: the results document (``results.json`` / ``results.csv``), written and read;
- :mod:`~MFFMTCore.base.thresholds`: the one rule for lesion and malignancy thresholds;
- :mod:`~MFFMTCore.base.devices`: the one rule for ``--device`` (auto, cpu, cuda, mps) and ``--threads``;
- :mod:`~MFFMTCore.base.lesion_decision`: whether a frame shows a lesion (the model's lesion rule);
- :mod:`~MFFMTCore.base.clip_finding`: one finding for a clip from its frames (lesion-weighted);
- :mod:`~MFFMTCore.base.terminology`: the "Lesion" segment's name, colour and terminology;
- :mod:`~MFFMTCore.base.model_metadata`: the model file's format and its metadata, read from the header;
- :mod:`~MFFMTCore.base.labels`: class labels;
- :mod:`~MFFMTCore.base.requirements`: the Python packages MFFMTCore needs;
- :mod:`~MFFMTCore.base.jsonsafe`: values made fit for strict JSON;
- :mod:`~MFFMTCore.base.spread`: indices spread evenly over a sequence (bounded passes);
- :mod:`~MFFMTCore.base.choices`: the named choices (backbones, fusions, augmentations, ...);
- :mod:`~MFFMTCore.base.presets`: the named training recipes;
- :mod:`~MFFMTCore.base.train_options`: the options of ``mffmt train``, declared once;
- :mod:`~MFFMTCore.base.run_folder`: a training run's folder, its files and their reading and writing;
- :mod:`~MFFMTCore.base.calibration`: which pixel spacings a header may claim (the plausibility range);
- :mod:`~MFFMTCore.base.process_group`: child processes started and stopped as a group (with what they start);
- :mod:`~MFFMTCore.base.pixel_budget`: how much of an image is decoded, at most.

This file imports none of them.
"""
