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

from MFFMTCore.inference.nrrd_stream import NrrdStream, write_map
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


def write_result_map(result: PredictionResult, name: str, path: str | os.PathLike) -> Path:
    """Write ``result``'s ``"probability"`` or ``"gradcam"`` map as a gzip NRRD file at ``path``
    (atomically): a map in memory is written a few frames at a time; a clip's streamed map is moved
    into place (or copied, to another path).

    Raises:
        ValueError: the result did not keep that map (a streamed clip's map not named in ``maps_to``).
    """
    stored = result.stored_map(name)
    if stored is None:
        raise ValueError(f"{result.source}: this prediction holds no {name} map to write")
    if isinstance(stored, NrrdStream):
        return stored.save(path)
    return write_map(path, stored, result.geometry)


def write_outputs(result: PredictionResult, directory: str | os.PathLike, stem: str,
                  outputs: Collection[str] = DEFAULT_OUTPUTS) -> dict[str, Path]:
    """Write the ``outputs`` files of ``result`` (Grad-CAM when it has one); returns name -> path.

    Every file is written without a whole copy of a map: the segmentation frame by frame from the
    compressed label map, a streamed clip's maps moved into place from the files they went to.
    """
    paths = output_paths(directory, stem, gradcam=result.has_gradcam, outputs=outputs)
    if "segmentation" in paths:
        write_segmentation(paths["segmentation"], result.labels, result.geometry)
    for name in ("probability", "gradcam"):
        if name in paths:
            write_result_map(result, name, paths[name])
    if "overlay" in paths:
        write_overlay(paths["overlay"], result)
    return paths
