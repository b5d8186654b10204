"""The files one prediction leaves in an output folder, all in the input's geometry.

- ``<stem>.seg.nrrd``: Slicer segmentation with the "Lesion" segment;
- ``<stem>_probability.nrrd``: float32 lesion probability (lets Slicer re-threshold without rerunning);
- ``<stem>_overlay.png``: frame with contour and finding (the clip's key frame);
- ``<stem>_gradcam.nrrd``: Grad-CAM of the malignant class, when requested.
"""

from __future__ import annotations

import os
from pathlib import Path

import SimpleITK as sitk

from MFFMTCore.files import atomic_path
from MFFMTCore.inference.overlay import write_overlay
from MFFMTCore.inference.result import PredictionResult
from MFFMTCore.inference.segmentation_file import write_segmentation


def output_paths(directory: str | os.PathLike, stem: str, gradcam: bool = False) -> dict[str, Path]:
    """Name -> path of every file :func:`write_outputs` writes for ``stem``."""
    directory = Path(directory)
    paths = {
        "segmentation": directory / f"{stem}.seg.nrrd",
        "probability": directory / f"{stem}_probability.nrrd",
        "overlay": directory / f"{stem}_overlay.png",
    }
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


def write_outputs(result: PredictionResult, directory: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Write every output file of ``result`` (Grad-CAM when it has one); returns name -> path."""
    paths = output_paths(directory, stem, gradcam=result.gradcam is not None)
    write_segmentation(paths["segmentation"], result.label, result.geometry)
    write_image(paths["probability"], result.probability_image())
    write_overlay(paths["overlay"], result)
    if "gradcam" in paths:
        write_image(paths["gradcam"], result.gradcam_image())
    return paths
