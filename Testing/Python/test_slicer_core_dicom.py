"""A volume loaded through Slicer's DICOM module, segmented on Slicer's core libraries (slicer-core).

Slicer's DICOM module leaves an ultrasound capture as a volume with unit spacing and the attribute
``DICOM.instanceUIDs``; the logic finds the source file through the DICOM database (here a stand-in:
:class:`StandInDatabase`) and predicts from it, so the calibration, the mm diameters and the DICOM SEG
and SR reach the scene. Files: pydicom's real calibrated ultrasound capture (``examples_palette.dcm``)
and a bundled BUS-BRA frame written as a calibrated ultrasound DICOM file (a breast lesion the
shipped model finds). A real ``mffmt serve`` worker with the shipped default model runs the requests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_samples import region_item, ultrasound_dicom
from pydicom.data import get_testdata_file

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "MFFMTCore" / "samples"
# The breast frame's calibration: 0.01 cm (0.1 mm) per pixel over the whole frame.
BREAST_SPACING_MM = 0.1

pytestmark = pytest.mark.slow


class StandInDatabase:
    """Slicer's DICOM database as the logic uses it: instance UID -> file, and insert."""

    def __init__(self, files: dict[str, str] | None = None):
        self.files = dict(files or {})
        self.inserted: list[Path] = []

    def fileForInstance(self, uid: str) -> str | None:
        return self.files.get(uid)

    def insert(self, path: Path) -> None:
        assert Path(path).is_file()
        self.inserted.append(Path(path))


@pytest.fixture(scope="module")
def env(tmp_path_factory, slicer_core_session):
    root = tmp_path_factory.mktemp("slicercore_dicom")
    with slicer_core_session(root) as (scene, slicer, module, logic):
        logic.dicomDatabase = StandInDatabase()
        yield scene, slicer, logic, root


def loaded_from_dicom(slicer, path: Path, name: str):
    """A volume as Slicer's DICOM module leaves an ultrasound file: its pixels (RGB as a vector volume),
    unit spacing (it does not read the ultrasound regions), and the instance UID attribute."""
    dataset = pydicom.dcmread(path)
    pixels = dataset.pixel_array
    frames = pixels[np.newaxis] if int(dataset.get("NumberOfFrames", 1)) == 1 else pixels
    volume = slicer.util.addVolumeFromArray(frames, np.diag([-1.0, -1.0, 1.0, 1.0]), name)
    volume.SetAttribute("DICOM.instanceUIDs", dataset.SOPInstanceUID)
    return volume, dataset.SOPInstanceUID


def ijk_to_ras(slicer, node):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def segment_to_world(slicer, segmentation):
    import vtk

    labelmap = slicer.vtkOrientedImageData()
    segmentation.GetBinaryLabelmapRepresentation(segmentation.GetSegmentation().GetNthSegmentID(0), labelmap)
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


@pytest.fixture(scope="module")
def breast_file(tmp_path_factory):
    """bus_0012-r.png (a BUS-BRA frame with a lesion) as a calibrated ultrasound DICOM file."""
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "bus_0012-r.png")))
    if pixels.ndim == 3:  # stored as RGB: the frame is grey
        pixels = pixels[..., 0]
    height, width = pixels.shape
    region = region_item(box=(0, 0, width - 1, height - 1), delta_cm=(BREAST_SPACING_MM / 10,) * 2)
    return ultrasound_dicom(tmp_path_factory.mktemp("dicom") / "breast.dcm", pixels[np.newaxis], regions=[region])


def test_calibrated_breast_frame_from_dicom_gives_mm_and_seg_and_sr_in_the_scene(env, breast_file):
    scene, slicer, logic, root = env
    volume, uid = loaded_from_dicom(slicer, breast_file, "breast")
    logic.dicomDatabase.files[uid] = str(breast_file)
    task = logic.startProcessing(volume, threshold=0.5).wait()
    assert task.status == "done", task.error
    segmentation, (row,) = task.segmentationNode, task.results
    # The calibration reached the scene: the volume has the calibrated spacing, mm everywhere.
    assert volume.GetSpacing() == pytest.approx((BREAST_SPACING_MM, BREAST_SPACING_MM, 1.0))
    assert volume.GetAttribute("MFFMT.spacingKnown") == "1"
    assert row["lesion_area_px"] > 0
    assert row["lesion_area_mm2"] == pytest.approx(row["lesion_area_px"] * BREAST_SPACING_MM ** 2, rel=1e-4)
    assert row["long_axis_mm"] == pytest.approx(row["long_axis_px"] * BREAST_SPACING_MM, rel=0.02)
    # Result nodes lie on the volume's voxels, and the caliper drawn is as long as the mm reported.
    np.testing.assert_allclose(segment_to_world(slicer, segmentation), ijk_to_ras(slicer, volume), atol=1e-4)
    probability = segmentation.GetNodeReference("MFFMT.probability")
    np.testing.assert_allclose(ijk_to_ras(slicer, probability), ijk_to_ras(slicer, volume), atol=1e-6)
    line = segmentation.GetNodeReference("MFFMT.longAxis")
    ends = [np.array(line.GetNthControlPointPosition(i)) for i in range(2)]
    assert np.linalg.norm(ends[1] - ends[0]) == pytest.approx(row["long_axis_mm"], rel=0.05)
    # The SEG and SR are kept beside the models folder, reference the source, and go into the database.
    files = {name: Path(segmentation.GetAttribute(f"MFFMT.{name}")) for name in ("dicomSegmentation", "dicomReport")}
    assert all(path.is_file() and path.parent.parent == logic.dicomResultsFolder for path in files.values())
    seg = pydicom.dcmread(files["dicomSegmentation"])
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence[0] \
        .ReferencedSOPInstanceUID == uid
    assert pydicom.dcmread(files["dicomReport"]).Modality == "SR"
    assert logic.addDicomResultsToDatabase(segmentation) == list(files.values())
    assert logic.dicomDatabase.inserted == list(files.values())
    # Redrawn at another threshold, the measurements stay in mm.
    (redrawn,) = logic.updateThreshold(segmentation, 0.3)
    assert redrawn["lesion_area_mm2"] == pytest.approx(redrawn["lesion_area_px"] * BREAST_SPACING_MM ** 2, rel=1e-4)
    assert not list(logic.workRoot.iterdir())


def test_real_palette_capture_is_calibrated_from_its_ultrasound_region(env):
    scene, slicer, logic, _ = env
    path = Path(get_testdata_file("examples_palette.dcm"))
    volume, uid = loaded_from_dicom(slicer, path, "palette")
    logic.dicomDatabase.files[uid] = str(path)
    task = logic.startProcessing(volume).wait()
    assert task.status == "done", task.error
    spacing = 0.2622878766  # the region's PhysicalDeltaX/Y, 0.0262 cm
    assert volume.GetSpacing()[:2] == pytest.approx((spacing, spacing))
    assert any("cut to the 800x350 frame" in note for note in task.notes)
    for row in task.results:
        area = row["lesion_area_mm2"]
        assert area == pytest.approx(row["lesion_area_px"] * spacing ** 2, rel=1e-4) or (
            row["lesion_area_px"] == 0 and (area == 0 or math.isnan(area)))


@pytest.mark.parametrize("case", ["not in the database", "file gone", "truncated", "another image",
                                  "several instances", "no database"])
def test_unusable_dicom_source_is_predicted_from_the_voxels_with_a_note(env, breast_file, tmp_path, case):
    scene, slicer, logic, _ = env
    volume, uid = loaded_from_dicom(slicer, breast_file, f"breast {case}")
    copy = tmp_path / "source.dcm"
    data = breast_file.read_bytes()
    if case == "file gone":
        logic.dicomDatabase.files[uid] = str(copy)
    elif case == "truncated":
        copy.write_bytes(data[: len(data) // 2])
        logic.dicomDatabase.files[uid] = str(copy)
    elif case == "another image":
        logic.dicomDatabase.files[uid] = get_testdata_file("examples_palette.dcm")
    elif case == "several instances":  # a series of frames: which file would hold the volume?
        logic.dicomDatabase.files[uid] = str(breast_file)
        volume.SetAttribute("DICOM.instanceUIDs", f"{uid} {uid}.2")
    else:
        logic.dicomDatabase.files.pop(uid, None)
    database = logic.dicomDatabase
    if case == "no database":  # the real seam, where slicer-core has no DICOM database
        from MFFMTSlicerLib.slicer_dicom_source import DicomDatabase

        logic.dicomDatabase = DicomDatabase()
    try:
        task = logic.startProcessing(volume, threshold=0.5).wait()
    finally:
        logic.dicomDatabase = database
    assert task.status == "done", task.error
    (note,) = task.notes
    assert note.startswith(f"breast {case}: ") and note.endswith("predicted from its voxels, calibration was "
                                                                 "not available") and "\n" not in note
    expected = {"not in the database": "is not in the DICOM database", "file gone": "file not found",
                "truncated": "DICOM file is truncated", "another image": "holds 1 frame(s) of 800x350 pixels",
                "several instances": "made from 2 DICOM instances", "no database": "cannot be looked up"}
    assert expected[case] in note
    (row,) = task.results
    assert volume.GetSpacing() == pytest.approx((1.0, 1.0, 1.0))  # untouched
    assert row["lesion_area_px"] > 0 and math.isnan(row["lesion_area_mm2"])
    assert task.segmentationNode.GetAttribute("MFFMT.dicomSegmentation") is None
