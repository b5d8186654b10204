"""Which DICOM results an input gets, and writing them without losing the input's other results.

Kept apart from :mod:`MFFMTCore.inference.dicom_export` so that predicting never depends on highdicom:
highdicom (0.28+) needs pydicom 3, and Slicer 5.10 bundles pydicom 2.4.4, which must not be replaced
(Slicer's DICOM module uses it). Where highdicom cannot be imported, a DICOM input gets its
prediction and a note saying why it has no DICOM SEG and SR.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from MFFMTCore.errors import MFFMTError, one_line

if TYPE_CHECKING:
    from MFFMTCore.inference.result import PredictionResult

NOT_WRITTEN = "DICOM results not written"


def dicom_output_paths(directory: str | os.PathLike, stem: str) -> dict[str, Path]:
    """Name -> path of the files :func:`MFFMTCore.inference.dicom_export.write_dicom_results` writes for ``stem``."""
    directory = Path(directory)
    return {"dicom_segmentation": directory / f"{stem}_seg.dcm", "dicom_report": directory / f"{stem}_sr.dcm"}


def export_dicom_results(result: PredictionResult, directory: str | os.PathLike, stem: str) -> dict[str, Path]:
    """``mffmt predict --dicom`` for one input: the DICOM SEG and SR of a DICOM input, nothing for another.

    A DICOM input whose results cannot be written (a header without the UIDs to reference, a header
    highdicom cannot use, no highdicom or pydicom 3 in this Python) gets no DICOM files and a
    one-line note why (in :attr:`MFFMTCore.dicom_io.DicomImage.notes`, so in results.json); its other
    results stand.
    """
    dicom = result.input_frames.dicom if result.input_frames is not None else None
    if dicom is None:
        return {}
    try:
        from MFFMTCore.inference.dicom_export import write_dicom_results
    except ImportError as error:
        import pydicom

        dicom.notes.append(one_line(f"{NOT_WRITTEN}: they need highdicom with pydicom 3 (this Python has "
                                    f"pydicom {pydicom.__version__}: {error})"))
        return {}
    absent = [path for path in dicom_output_paths(directory, stem).values() if not path.exists()]
    try:
        return write_dicom_results(result, directory, stem)
    except Exception as error:  # a header highdicom cannot use: the prediction itself is still good
        for path in absent:  # a SEG written before the SR failed is not left unrecorded
            path.unlink(missing_ok=True)
        problem = error.problem if isinstance(error, MFFMTError) else f"{NOT_WRITTEN}: {type(error).__name__}: {error}"
        dicom.notes.append(one_line(problem))
        return {}
