"""Our DICOM SEG and SR where Slicer users read them: with dcmqi (QuantitativeReporting's library).

dcmqi's ``tid1500reader`` reads the SR. dcmqi's ``segimage2itkimage`` does not read a Segmentation of a
2D ultrasound frame: it needs Plane Orientation (Patient) and per-frame Plane Position (Patient)
(``Helper::getImageDirections`` and ``computeVolumeExtent`` in dcmqi's source). highdicom writes them
only for sources with patient geometry, and dciodvfy finds our SEG complete without them; an
ultrasound capture has no patient geometry, and writing some would invent where the frame lies. The test pins both facts: our SEG is
refused for that reason only (a copy with made-up identity geometry loads, with our label), so
Slicer's path loads our ``.seg.nrrd`` with the SR (docs/DICOM.md).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from dicom_samples import region_item, ultrasound_dicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import generate_uid

from MFFMTCore.inference.dicom_export import write_dicom_results

REPO = Path(__file__).resolve().parents[2]


def dcmqi_tool(name: str, dev_extra) -> str:
    dev_extra("dcmqi")
    tool = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    assert tool, f"dcmqi is installed but {name} is not on PATH"
    return tool


def run(*command) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def calibrated_results(tmp_path_factory, default_model):
    """A BUS-BRA breast frame with a lesion (bus_0012-r) as a calibrated ultrasound DICOM file (0.1 mm
    pixels), predicted by the shipped model, and its SEG and SR."""
    from MFFMTCore.inference import Predictor

    folder = tmp_path_factory.mktemp("dcmqi")
    pixels = sitk.GetArrayFromImage(sitk.ReadImage(str(REPO / "MFFMTCore" / "samples" / "bus_0012-r.png")))
    pixels = pixels[..., 0] if pixels.ndim == 3 else pixels
    region = region_item(box=(0, 0, pixels.shape[1] - 1, pixels.shape[0] - 1), delta_cm=(0.01, 0.01))
    source = ultrasound_dicom(folder / "breast.dcm", pixels[np.newaxis], regions=[region])
    result = Predictor(default_model).predict(source, threshold=0.5)
    assert result.geometry.spacing_known and result.frames[0].components, "the shipped model finds this lesion"
    return result, write_dicom_results(result, folder / "out", "breast")


def with_identity_geometry(path: Path, destination: Path) -> Path:
    """A copy of a one-frame SEG with made-up patient geometry (what we do not write)."""
    segmentation = pydicom.dcmread(path)
    shared = segmentation.SharedFunctionalGroupsSequence[0]
    orientation, measures, position = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    measures.PixelSpacing, measures.SliceThickness = [1, 1], 1
    position.ImagePositionPatient = [0, 0, 0]
    shared.PlaneOrientationSequence, shared.PixelMeasuresSequence = Sequence([orientation]), Sequence([measures])
    segmentation.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence = Sequence([position])
    segmentation.FrameOfReferenceUID = segmentation.get("FrameOfReferenceUID") or generate_uid()
    segmentation.save_as(destination)
    return destination


def test_dcmqi_refuses_our_2d_ultrasound_seg_only_for_the_patient_geometry_it_lacks(
        tmp_path, calibrated_results, dev_extra):
    result, paths = calibrated_results
    tool = dcmqi_tool("segimage2itkimage", dev_extra)
    (tmp_path / "a").mkdir()
    refused = run(tool, "--inputDICOM", str(paths["dicom_segmentation"]), "--outputDirectory", str(tmp_path / "a"))
    assert refused.returncode != 0
    assert "Plane Orientation (Patient) is missing" in refused.stdout + refused.stderr
    # The same SEG with invented geometry loads, voxel for voxel: nothing else stands in dcmqi's way.
    invented = with_identity_geometry(paths["dicom_segmentation"], tmp_path / "invented.dcm")
    (tmp_path / "b").mkdir()
    loaded = run(tool, "--inputDICOM", str(invented), "--outputDirectory", str(tmp_path / "b"))
    assert loaded.returncode == 0, loaded.stdout + loaded.stderr
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "b" / "1.nrrd")))
    np.testing.assert_array_equal(label.reshape(result.label[0].shape) > 0, result.label[0] > 0)
    assert result.label[0].sum() > 0


def test_dcmqi_reads_our_report(tmp_path, calibrated_results, dev_extra):
    result, paths = calibrated_results
    tool = dcmqi_tool("tid1500reader", dev_extra)
    output = tmp_path / "sr.json"
    read = run(tool, "--inputDICOM", str(paths["dicom_report"]), "--outputMetadata", str(output))
    assert read.returncode == 0, read.stdout + read.stderr
    assert "Both Referenced Frame Number and Referenced Segment Number" not in read.stdout + read.stderr
    group = json.loads(output.read_text())["Measurements"][0]
    assert group["FindingSite"]["CodeMeaning"] == "Breast" and group["Finding"]["CodeMeaning"] == "Lesion"
    values = {item["quantity"]["CodeMeaning"]: item for item in group["measurementItems"]}
    component = result.frames[0].components[0]
    assert values["Long axis"]["units"]["CodeValue"] == "mm"
    assert float(values["Long axis"]["value"]) == pytest.approx(component.measurements.long_axis.length_mm, rel=1e-6)
    assert float(values["Area"]["value"]) == pytest.approx(component.area_mm2, rel=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        segmentation = pydicom.dcmread(paths["dicom_segmentation"])
    assert segmentation.PatientOrientation == ""  # Type 2C: present (the source gives none)
