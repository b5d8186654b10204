"""MFFMTCore's DICOM reading under pydicom 2.4, the major version Slicer 5.10 bundles.

Slicer 5.10 ships pydicom 2.4.4 (Slicer issue 8796: "Slicer uses pydicom 2.4.4 ... upgrade after
5.10"; QuantitativeReporting was downgraded for it, ExtensionsIndex pull request 2238), and replacing
Slicer's copy can break its DICOM module. So ``read_dicom`` must give the same answers with pydicom 2:
this test reads the same files (real pydicom captures, and synthetic ones for every encoding,
calibration and truncation case) under pydicom 3 here and under pydicom 2.4.4 in a child process
(pydicom 2 installed once with pip into a cache folder and put first on its path), and compares.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_read_summary import summarise
from dicom_samples import capture, region_item, ultrasound_dicom
from pydicom.data import get_testdata_file
from pydicom.pixels import convert_color_space
from pydicom.uid import JPEG2000Lossless, RLELossless

REPO = Path(__file__).resolve().parents[2]
PYDICOM2 = "pydicom==2.4.4"
CACHE = Path(os.environ.get("MFFMT_TEST_CACHE", Path.home() / ".cache" / "mffmt-tests")) / PYDICOM2.replace("==", "-")
REAL = ["examples_palette.dcm", "examples_ybr_color.dcm", "examples_rgb_color.dcm", "examples_jpeg2k.dcm",
        "ExplVR_BigEnd.dcm", "SC_ybr_full_422_uncompressed.dcm", "SC_rgb_jpeg_dcmtk.dcm",
        "SC_rgb_dcmtk_+eb+cy+s2.dcm", "MR_truncated.dcm"]


def pydicom2() -> Path:
    """A folder holding pydicom 2.4.4 alone, installed with pip the first time."""
    if not (CACHE / "pydicom" / "__init__.py").is_file():
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        temporary = CACHE.with_name(CACHE.name + f".{os.getpid()}")
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(temporary),
                        PYDICOM2], check=True, timeout=300)
        os.replace(temporary, CACHE)
    return CACHE


def synthetic_files(folder: Path) -> list[Path]:
    grey = capture(frames=2)
    rgb = np.stack([grey[0], grey[0] // 2, 255 - grey[0]], axis=-1)[None]
    palette = np.stack([np.arange(256), np.arange(256)[::-1], np.full(256, 7)], axis=1)
    files = [
        ultrasound_dicom(folder / "calibrated.dcm", capture(), regions=[region_item()]),
        ultrasound_dicom(folder / "clip_rle.dcm", grey, regions=[region_item()], transfer_syntax=RLELossless),
        ultrasound_dicom(folder / "j2k.dcm", capture(), transfer_syntax=JPEG2000Lossless),
        ultrasound_dicom(folder / "mono1.dcm", capture(), photometric="MONOCHROME1"),
        ultrasound_dicom(folder / "palette.dcm", capture(), photometric="PALETTE COLOR", palette=palette),
        ultrasound_dicom(folder / "ybr_full.dcm", convert_color_space(rgb[0], "RGB", "YBR_FULL")[None],
                         photometric="YBR_FULL"),
        ultrasound_dicom(folder / "absurd.dcm", capture(), regions=[region_item(delta_cm=(1e10, 1e10))]),
        ultrasound_dicom(folder / "small.dcm", capture(), regions=[region_item(box=(40, 30, 44, 34))]),
    ]
    for name, source, cut in (("cut_pixels.dcm", files[0], 0.5), ("cut_rle.dcm", files[1], 0.5)):
        data = source.read_bytes()
        (folder / name).write_bytes(data[: int(len(data) * cut)])
        files.append(folder / name)
    return files


def test_dicom_reading_gives_the_same_answers_with_pydicom_2(tmp_path):
    paths = [str(path) for path in synthetic_files(tmp_path)] + [get_testdata_file(name) for name in REAL]
    expected, expected_pixels = summarise(paths)
    output = tmp_path / "pydicom2.npz"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(pydicom2()), str(REPO),
                                                                 str(REPO / "Testing" / "Python")])}
    subprocess.run([sys.executable, str(REPO / "Testing" / "Python" / "dicom_read_summary.py"), str(output), *paths],
                   check=True, env=environment, timeout=300)
    with np.load(output) as saved:
        records = json.loads(str(saved["records"]))
        pixels = {name: saved[name] for name in saved.files if name != "records"}
    assert records.pop("pydicom") == "2.4.4" and expected.pop("pydicom") == pydicom.__version__
    assert expected["calibrated.dcm"]["spacing"] == pytest.approx([0.2, 0.3])  # the comparison compares answers
    assert "truncated" in expected["cut_rle.dcm"]["error"]
    for name, record in expected.items():
        got = records[name]
        if "error" in record:
            assert got == record, name
            continue
        assert {**got, "spacing": None} == {**json.loads(json.dumps(record)), "spacing": None}, name
        assert got["spacing"] == pytest.approx(record["spacing"]) if record["spacing"] else got["spacing"] is None
        # Lossy JPEG in YCbCr: the two versions round the conversion to RGB differently (1-3 grey levels).
        difference = np.abs(pixels[name].astype(int) - expected_pixels[name].astype(int))
        assert difference.max() <= 3 and difference.mean() < 0.5, f"{name}: pixels differ under pydicom 2"


def test_highdicom_is_not_required_next_to_slicers_pydicom_2():
    """pip would put pydicom 3 over Slicer 5.10's 2.4.4 to install highdicom: it is only wanted with 3."""
    from importlib.metadata import PackageNotFoundError

    from MFFMTSlicerLib.dependencies import check_requirements, missing_requirements

    from MFFMTCore.base.requirements import REQUIREMENTS

    def installed(versions):
        def version_of(name):
            if name not in versions:
                raise PackageNotFoundError(name)
            return versions[name]
        return version_of

    wanted = [r for r in REQUIREMENTS if r.name in ("pydicom", "highdicom")]
    with_2 = check_requirements(wanted, installed({"pydicom": "2.4.4"}), importable=lambda module: False)
    assert missing_requirements(with_2) == []
    with_3 = check_requirements(wanted, installed({"pydicom": "3.0.2"}), importable=lambda module: False)
    assert [status.requirement.name for status in missing_requirements(with_3)] == ["highdicom"]


def test_without_highdicom_a_dicom_input_is_predicted_with_a_note(tmp_path, dark_lesion_predictor, monkeypatch):
    from MFFMTCore.inference.batch import predict_files
    from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS

    monkeypatch.setitem(sys.modules, "highdicom", None)  # import highdicom raises ImportError
    monkeypatch.delitem(sys.modules, "MFFMTCore.inference.dicom_export", raising=False)
    source = ultrasound_dicom(tmp_path / "us.dcm", capture(), regions=[region_item()])
    summary = predict_files(dark_lesion_predictor, [source], tmp_path / "out", outputs=(*DEFAULT_OUTPUTS, "dicom"))
    (outcome,) = summary.outcomes
    assert outcome.status == "done" and "dicom_segmentation" not in outcome.outputs
    (entry,) = json.loads((tmp_path / "out" / "results.json").read_text())["inputs"]
    assert entry["geometry"]["spacing_known"]
    (note,) = entry["notes"]
    assert note.startswith("DICOM results not written: they need highdicom with pydicom 3")
