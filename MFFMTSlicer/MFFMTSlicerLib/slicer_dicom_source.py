"""A volume loaded through Slicer's DICOM module, predicted from its source file.

Slicer's DICOM module gives an ultrasound capture's voxels but not its Sequence of Ultrasound Regions
(the calibration and the imaging region), and the DICOM SEG and SR need the source instance to
reference. So a volume that Slicer loaded from one ultrasound DICOM file (its ``DICOM.instanceUIDs``
attribute names one instance, the file has no patient geometry and holds the volume's voxels) is
predicted from that file, found through the DICOM database; the volume then takes the geometry
MFFMTCore reads from the file (the calibrated pixel spacing; a capture has no position in the
patient, so origin and direction are the reader's defaults), so that the result nodes, the rulers
and the reported mm agree. The SEG and SR are kept in a folder beside the models folder and can be
added to the DICOM database.

Where the source cannot be used (not in the database, file gone, unreadable, another image), the
volume is predicted from its voxels as any other, with a one-line note that calibration was not
available. :class:`DicomDatabase` is the seam to Slicer's DICOM database that tests replace.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.errors import one_line

INSTANCE_UIDS_ATTRIBUTE = "DICOM.instanceUIDs"
# Attributes of a result segmentation: where its DICOM SEG and SR were kept.
DICOM_FILE_ATTRIBUTES = {"dicom_segmentation": "MFFMT.dicomSegmentation", "dicom_report": "MFFMT.dicomReport"}


class DicomDatabase:
    """What MFFMT asks of Slicer's DICOM database (``slicer.dicomDatabase``)."""

    @staticmethod
    def _database():
        import slicer

        database = getattr(slicer, "dicomDatabase", None)
        if database is None or not database.isOpen:
            raise RuntimeError("Slicer's DICOM database is not open (open the DICOM module once)")
        return database

    def fileForInstance(self, uid: str) -> str | None:
        """The file of a SOP instance, or None when the database does not hold it."""
        return self._database().fileForInstance(uid) or None

    def insert(self, path: Path) -> None:
        """Add a DICOM file to the database (copied into the database's folder)."""
        self._database().insert(str(path), True, False)


@dataclass
class DicomSource:
    """Where a volume is predicted from.

    Args:
        path: its ultrasound DICOM source file, or None (predicted from its voxels).
        note: why a volume loaded from DICOM is predicted from its voxels (one line), else None.
    """

    path: Path | None
    note: str | None = None


def findDicomSource(volumeNode, database: DicomDatabase) -> DicomSource:
    """The ultrasound DICOM file a volume was loaded from, when it can be predicted from it.

    Volumes not loaded from DICOM, and DICOM volumes with patient geometry (CT, MR: their voxels are
    placed already), are predicted from their voxels without a note.
    """
    from MFFMTCore.dicom_io import read_dicom_header
    from MFFMTCore.files import ImageReadError

    uids = (volumeNode.GetAttribute(INSTANCE_UIDS_ATTRIBUTE) or "").split()
    if not uids:
        return DicomSource(None)

    def voxels(problem: str) -> DicomSource:
        return DicomSource(None, one_line(f"{volumeNode.GetName()}: {problem}; predicted from its voxels, "
                                          "calibration was not available"))

    if len(uids) > 1:
        return voxels(f"made from {len(uids)} DICOM instances, not one ultrasound file")
    try:
        file = database.fileForInstance(uids[0])
    except Exception as error:  # no database, a closed one, a database error: the voxels remain
        return voxels(f"its DICOM instance cannot be looked up ({one_line(error)})")
    if not file:
        return voxels(f"DICOM instance {uids[0]} is not in the DICOM database")
    try:  # checked without decoding the pixels, which the worker does
        header = read_dicom_header(file)
    except ImageReadError as error:
        return voxels(f"its source file cannot be read ({error})")
    if "ImageOrientationPatient" in header or "SharedFunctionalGroupsSequence" in header:
        return DicomSource(None)
    frames, rows, columns = int(header.get("NumberOfFrames", 1) or 1), int(header.Rows), int(header.Columns)
    if tuple(volumeNode.GetImageData().GetDimensions()) != (columns, rows, frames):
        return voxels(f"its source file {file} holds {frames} frame(s) of {columns}x{rows} pixels, "
                      f"not the volume's {'x'.join(map(str, volumeNode.GetImageData().GetDimensions()))}")
    return DicomSource(Path(file).absolute())


def resultEntry(outputDir: str | os.PathLike, key: str) -> dict[str, Any]:
    """The results.json entry of input ``key`` (its geometry, notes and outputs)."""
    document = json.loads((Path(outputDir) / "results.json").read_text(encoding="utf-8"))
    return next(entry for entry in document["inputs"] if entry["input"] == key)


def applySourceGeometry(volumeNode, geometry: dict[str, Any]) -> None:
    """Give a volume predicted from its DICOM source the geometry MFFMTCore read from the file
    (``geometry`` as results.json has it); records whether its spacing is a calibration."""
    import slicer

    from MFFMTSlicerLib.slicer_nodes import SPACING_KNOWN_ATTRIBUTE

    placed = ImageGeometry(tuple(geometry["spacing"]), tuple(geometry["origin"]), tuple(geometry["direction"]),
                           bool(geometry["spacing_known"]))
    volumeNode.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(placed.ijk_to_ras()))
    volumeNode.SetAttribute(SPACING_KNOWN_ATTRIBUTE, "1" if placed.spacing_known else "0")


def keepDicomResults(outputs: dict[str, Any], folder: Path) -> dict[str, Path]:
    """Copy a run's DICOM SEG and SR (``outputs`` as results.json names them) into ``folder``, which
    outlives the run's working folder; name -> kept file."""
    from MFFMTCore.files import atomic_path

    kept = {}
    for name in DICOM_FILE_ATTRIBUTES:
        if name in outputs:
            folder.mkdir(parents=True, exist_ok=True)
            kept[name] = folder / Path(outputs[name]).name
            with atomic_path(kept[name]) as temporary:
                shutil.copyfile(outputs[name], temporary)
    return kept
