"""The files one prediction leaves in an output folder, all in the input's geometry.

Each is one of the outputs a user can choose (``mffmt predict --outputs``, :data:`OUTPUTS`):

- ``seg``: ``<stem>.seg.nrrd``, Slicer segmentation with the "Lesion" segment;
- ``probability``: ``<stem>_probability.nrrd``, float32 lesion probability (lets Slicer re-threshold
  without rerunning);
- ``overlay``: ``<stem>_overlay.png``, frame with contour and finding (the clip's key frame);
- ``dicom``: for DICOM inputs, a DICOM Segmentation and Structured Report
  (:mod:`MFFMTCore.inference.dicom_export`);

and ``<stem>_gradcam.nrrd``, Grad-CAM of the malignant class, when requested.
"""

from __future__ import annotations

import os
from collections.abc import Collection
from pathlib import Path

import SimpleITK as sitk

from MFFMTCore.files import atomic_path
from MFFMTCore.inference.overlay import write_overlay
from MFFMTCore.inference.result import PredictionResult
from MFFMTCore.inference.segmentation_file import write_segmentation

#: The outputs ``mffmt predict --outputs`` can name; the results table is always written.
OUTPUTS = ("seg", "probability", "overlay", "dicom")
#: What ``mffmt predict`` writes unless told otherwise.
DEFAULT_OUTPUTS = ("seg", "probability", "overlay")
# Output -> (name of its file in results.json's "outputs", file name after the stem).
_FILES = {"seg": ("segmentation", ".seg.nrrd"), "probability": ("probability", "_probability.nrrd"),
          "overlay": ("overlay", "_overlay.png")}


def output_paths(directory: str | os.PathLike, stem: str, gradcam: bool = False,
                 outputs: Collection[str] = DEFAULT_OUTPUTS) -> dict[str, Path]:
    """Name -> path of every file :func:`write_outputs` writes for ``stem`` (``dicom`` aside)."""
    directory = Path(directory)
    paths = {name: directory / f"{stem}{suffix}" for output, (name, suffix) in _FILES.items() if output in outputs}
    if gradcam:
        paths["gradcam"] = directory / f"{stem}_gradcam.nrrd"
    return paths


def write_image(path: str | os.PathLike, image: sitk.Image) -> Path:
    """Write a SimpleITK image (compressed) atomically. Returns the path."""
    path = Path(path)
    with atomic_path(path) as temporary:
        # gzip level 1: a 300-frame float32 map is written about 4x faster than at the default level.
        sitk.WriteImage(image, str(temporary), useCompression=True, compressionLevel=1)
    return path


def write_outputs(result: PredictionResult, directory: str | os.PathLike, stem: str,
                  outputs: Collection[str] = DEFAULT_OUTPUTS) -> dict[str, Path]:
    """Write the ``outputs`` files of ``result`` (Grad-CAM when it has one); returns name -> path."""
    paths = output_paths(directory, stem, gradcam=result.gradcam is not None, outputs=outputs)
    if "segmentation" in paths:
        write_segmentation(paths["segmentation"], result.label, result.geometry)
    if "probability" in paths:
        write_image(paths["probability"], result.probability_image())
    if "overlay" in paths:
        write_overlay(paths["overlay"], result)
    if "gradcam" in paths:
        write_image(paths["gradcam"], result.gradcam_image())
    return paths
