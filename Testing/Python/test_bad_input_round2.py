"""Round 2 of the hostile-user promises (issue 21): reruns never go stale, a kill never blocks an input,
long names and huge images do not stop a batch, flagged frames carry no answer."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MFFMTCore.cli import main
from MFFMTCore.files import ImageReadError, image_files, read_image
from MFFMTCore.inference.outputs import OUTPUTS


def rows_of(output: Path) -> dict[str, list[dict[str, str]]]:
    rows: dict[str, list[dict[str, str]]] = {}
    with open(output / "results.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            rows.setdefault(Path(row["input"]).name, []).append(row)
    return rows


def predict(model: Path, output: Path, *inputs: Path | str, extra: tuple[str, ...] = ()) -> int:
    return main(["predict", *map(str, inputs), "--output", str(output), "--model", str(model),
                 "--progress", "none", "--threads", "1", *extra])


def pixels(seed: int, shape=(48, 64)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, shape, dtype=np.uint8)


# ------------------------------------------------------------ detached headers (item 2 and item 12)


@pytest.mark.parametrize("suffix", [".mhd", ".nhdr"])
def test_a_rerun_after_the_pixels_of_a_detached_header_changed_is_redone(model_path, tmp_path, suffix):
    header = tmp_path / "in" / f"scan{suffix}"
    header.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(pixels(1)), str(header))
    data = tmp_path / "in" / "scan.raw"
    assert image_files(header) == [header, data]
    output = tmp_path / "out"
    assert predict(model_path, output, header) == 0
    before = rows_of(output)[header.name][0]["p_malignant"]
    header_bytes = header.read_bytes()
    data.write_bytes(pixels(2).tobytes())  # new pixels, the header untouched
    assert header.read_bytes() == header_bytes
    assert predict(model_path, output, header) == 0
    document = json.loads((output / "results.json").read_text())
    assert rows_of(output)[header.name][0]["p_malignant"] != before
    assert document["inputs"][0]["status"] == "done" and document["inputs"][0]["seconds"] > 0


@pytest.mark.parametrize("target", ["/etc/passwd", "../secret.raw"])
def test_a_header_naming_a_data_file_outside_its_folder_is_refused(model_path, tmp_path, target):
    folder = tmp_path / "in"
    folder.mkdir()
    (tmp_path / "secret.raw").write_bytes(bytes(48 * 64))
    header = folder / "scan.mhd"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(1)), str(header))
    header.write_text(header.read_text().replace("ElementDataFile = scan.raw", f"ElementDataFile = {target}"))
    with pytest.raises(ImageReadError, match="outside its folder"):
        read_image(header)
    assert predict(model_path, tmp_path / "out", header) == 1
    assert "names a data file outside its folder" in rows_of(tmp_path / "out")["scan.mhd"][0]["error"]
    # A link beside the header is the user's explicit choice of that file: accepted.
    (folder / "linked.raw").symlink_to(tmp_path / "secret.raw")
    header.write_text(header.read_text().replace(f"ElementDataFile = {target}", "ElementDataFile = linked.raw"))
    assert read_image(header).GetSize() == (64, 48)


# ------------------------------------------------------------ long names (item 8)


def test_a_250_character_name_gets_a_shortened_unique_stem_and_the_batch_goes_on(model_path, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    first, second = (folder / ("x" * 246 + tail + ".png") for tail in ("a", "b"))
    for seed, path in enumerate((first, second)):
        sitk.WriteImage(sitk.GetImageFromArray(pixels(seed)), str(path))
    short = folder / "short.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(3)), str(short))
    output = tmp_path / "out"
    assert predict(model_path, output, first, second, short) == 0
    document = json.loads((output / "results.json").read_text())
    stems = [entry["stem"] for entry in document["inputs"]]
    assert len(set(stems)) == 3 and stems[2] == "short"
    assert all(len(name.encode()) <= 255 for name in os.listdir(output))
    assert all(entry["status"] == "done" and Path(entry["outputs"]["overlay"]).is_file() for entry in document["inputs"])
    # The same names get the same stems on a rerun: skipped, nothing redone.
    assert predict(model_path, output, first, second, short) == 0
    assert [entry["stem"] for entry in json.loads((output / "results.json").read_text())["inputs"]] == stems


# ------------------------------------------------------------ write, then record (item 3)


def test_a_kill_between_writing_and_recording_does_not_block_the_input(model_path, tmp_path):
    scan = tmp_path / "scan.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(1)), str(scan))
    output = tmp_path / "out"
    # A real SIGKILL at the moment results.json is about to record the files just written.
    code = ("import os, signal, sys\n"
            "import MFFMTCore.inference.batch as batch\n"
            "batch.write_results = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)\n"
            "from MFFMTCore.cli import main\n"
            f"main(['predict', {str(scan)!r}, '--output', {str(output)!r}, '--model', {str(model_path)!r},"
            " '--progress', 'none', '--threads', '1'])\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL
    assert (output / "scan_overlay.png").is_file() and not (output / "results.json").exists()
    assert predict(model_path, output, scan) == 0  # recognised as its own leftovers and replaced
    entry = json.loads((output / "results.json").read_text())["inputs"][0]
    assert entry["status"] == "done" and (output / "scan_overlay.png").is_file()


def test_a_failure_after_some_files_were_written_leaves_no_unrecorded_file(model_path, tmp_path, monkeypatch):
    import MFFMTCore.inference.outputs as outputs

    scan = tmp_path / "scan.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(1)), str(scan))
    output = tmp_path / "out"
    assert predict(model_path, output, scan) == 0

    def broken(*args, **kwargs):
        raise RuntimeError("export failed")

    monkeypatch.setattr(outputs, "write_overlay", broken)  # the segmentation and map are already written
    assert predict(model_path, output, scan, extra=("--overwrite",)) == 1
    document = json.loads((output / "results.json").read_text())
    recorded = {Path(file).name for entry in document["inputs"] for file in (entry.get("outputs") or {}).values()}
    left = {name for name in os.listdir(output) if not name.startswith(".") and not name.startswith("results.")}
    assert left <= recorded and document["inputs"][0]["status"] == "failed" and not left
    monkeypatch.undo()
    assert predict(model_path, output, scan) == 0  # nothing in the way


# ------------------------------------------------------------ flagged frames carry no answer (item 10)


def test_a_flagged_frame_has_no_probability_no_lesion_and_no_lesion_in_its_dicom_results(tmp_path, dark_lesion_predictor):
    import highdicom as hd
    import pydicom
    from dicom_samples import ultrasound_dicom

    from MFFMTCore.inference.dicom_export import CLASS_CONCEPT, PROBABILITY_CONCEPT
    from MFFMTCore.inference.results_table import frame_rows

    # A colour-flow-like capture: strongly coloured everywhere, with a dark region the network calls lesion.
    frame = np.zeros((1, 120, 160, 3), np.uint8)
    frame[..., 0], frame[..., 2] = 220, 40
    frame[0, 40:60, 60:100] = 5
    source = ultrasound_dicom(tmp_path / "colour.dcm", frame, photometric="RGB")
    output = tmp_path / "out"
    from MFFMTCore.inference.batch import predict_files

    summary = predict_files(dark_lesion_predictor, [source], output, outputs=OUTPUTS)
    assert summary.outcomes[0].status == "done"
    result = dark_lesion_predictor.predict(source)
    (finding,) = result.frames
    assert finding.input_check.flagged and finding.prediction == "not breast B-mode"
    assert finding.p_malignant is None and not finding.lesion_present and not finding.components
    assert not result.label.any()
    (row,) = frame_rows(result, str(source))
    assert row["p_malignant"] is None and row["p_benign"] is None and row["lesion_area_px"] == 0
    (csv_row,) = rows_of(output)["colour.dcm"]
    assert csv_row["p_malignant"] == "" and csv_row["lesion_present"] == "False" and csv_row["long_axis_px"] == ""
    report = hd.sr.srread(output / "colour_sr.dcm")
    (group,) = report.content.get_planar_roi_measurement_groups()
    assert PROBABILITY_CONCEPT not in [item.name for item in group.get_measurements()]
    assert [item.value.meaning for item in group.get_qualitative_evaluations() if item.name == CLASS_CONCEPT] == [
        "not breast B-mode"]
    assert not pydicom.dcmread(output / "colour_seg.dcm").pixel_array.any()


def test_a_clip_whose_frames_are_all_flagged_has_no_probability_either():
    from MFFMTCore.base.geometry import ImageGeometry
    from MFFMTCore.inference.input_check import InputCheck
    from MFFMTCore.inference.result import PredictionResult

    check = InputCheck(score=2.0, flagged=True, reason="colour", colour=0.9, distance=None)
    result = PredictionResult(
        probability=np.full((2, 40, 40), 0.9, np.float32), class_probabilities=np.array([[0.2, 0.8]] * 2, np.float32),
        class_names=["benign", "malignant"], geometry=ImageGeometry((1.0,) * 3, (0.0,) * 3, tuple(np.eye(3).ravel()), False),
        threshold=0.5, input_checks=[check, check])
    assert result.clip.prediction == "not breast B-mode" and result.clip.p_malignant is None
    assert json.loads(json.dumps(result.to_json(), allow_nan=False))["clip"]["probabilities"] == {
        "benign": None, "malignant": None}
    assert not result.label.any() and all(not frame.components for frame in result.frames)


# ------------------------------------------------------------ the pixel budget (item 7) and grey + alpha (item 12)


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A valid PNG header claiming ``width`` x ``height`` grey pixels, with almost no data behind it
    (what a decompression bomb looks like before it is decoded)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 100))
                     + chunk(b"IEND", b""))
    return path


def test_a_decompression_bomb_is_refused_in_one_line_before_decoding(model_path, tmp_path):
    bomb = png_claiming(tmp_path / "bomb.png", 30000, 30000)
    fine = tmp_path / "fine.png"
    sitk.WriteImage(sitk.GetImageFromArray(pixels(1)), str(fine))
    with pytest.raises(ImageReadError, match="30000x30000 pixels is over the budget"):
        read_image(bomb)
    assert predict(model_path, tmp_path / "out", bomb, fine) == 1
    rows = rows_of(tmp_path / "out")
    assert "refused before decoding" in rows["bomb.png"][0]["error"] and rows["fine.png"][0]["prediction"]


def test_the_pixel_budget_is_configurable_and_covers_arrays_and_dicom_headers(tmp_path, monkeypatch):
    import pydicom
    from dicom_samples import capture, ultrasound_dicom

    from MFFMTCore.inference.frames import as_frame_stack

    source = ultrasound_dicom(tmp_path / "clip.dcm", capture(frames=2))
    lying = pydicom.dcmread(source)
    lying.NumberOfFrames = 100000  # 100000 frames of 120x160: 1.8 GiB claimed (3.6 GiB to read), 38 KB stored
    lying.save_as(tmp_path / "lying.dcm")
    with pytest.raises(ImageReadError, match="lying.dcm: 100000 frames of 160x120 pixels would take 3.6 GiB to decode"):
        as_frame_stack(tmp_path / "lying.dcm")
    assert as_frame_stack(source).num_frames == 2
    monkeypatch.setenv("MFFMT_MAX_FRAME_PIXELS", "1000")
    with pytest.raises(ImageReadError, match="frame of 64x48 pixels is over the budget of 1000"):
        as_frame_stack(pixels(1))
    monkeypatch.setenv("MFFMT_MAX_FRAME_PIXELS", "lots")
    with pytest.raises(Exception, match="MFFMT_MAX_FRAME_PIXELS: must be a positive whole number"):
        as_frame_stack(pixels(1))


def test_the_budget_counts_what_reading_holds_a_colour_or_dicom_file_twice(tmp_path, monkeypatch):
    """One input stays under 2 GB with the model: a colour file (SimpleITK converts its reader's buffer)
    and a DICOM file (pydicom keeps its pixel data beside the array) count twice; arrays in memory once."""
    import pydicom
    from dicom_samples import capture, ultrasound_dicom

    from MFFMTCore.base.pixel_budget import MAX_INPUT_BYTES
    from MFFMTCore.inference.frames import as_frame_stack

    assert MAX_INPUT_BYTES == 1 << 30
    grey = np.stack([pixels(seed) for seed in range(3)])  # 3 frames of 48x64: 9216 bytes
    sitk.WriteImage(sitk.GetImageFromArray(grey), str(tmp_path / "grey.nrrd"))
    sitk.WriteImage(sitk.GetImageFromArray(np.stack([grey] * 3, axis=-1), isVector=True), str(tmp_path / "rgb.nrrd"))
    dicom = ultrasound_dicom(tmp_path / "clip.dcm", capture(frames=2))
    header = pydicom.dcmread(dicom, stop_before_pixels=True)
    dicom_bytes = header.Rows * header.Columns * 2 * int(header.SamplesPerPixel)
    monkeypatch.setenv("MFFMT_MAX_INPUT_BYTES", str(3 * 9216))
    assert as_frame_stack(tmp_path / "grey.nrrd").num_frames == 3
    assert as_frame_stack(np.stack([grey] * 3, axis=-1)).num_frames == 3  # in memory: held once
    with pytest.raises(ImageReadError, match="rgb.nrrd: 3 frames of 64x48 pixels would take 0.0 GiB to decode"):
        as_frame_stack(tmp_path / "rgb.nrrd")
    monkeypatch.setenv("MFFMT_MAX_INPUT_BYTES", str(2 * dicom_bytes - 1))
    with pytest.raises(ImageReadError, match="clip.dcm: 2 frames"):
        as_frame_stack(dicom)
    monkeypatch.setenv("MFFMT_MAX_INPUT_BYTES", str(2 * dicom_bytes))
    assert as_frame_stack(dicom).num_frames == 2


def test_a_grey_and_alpha_png_is_read_as_its_grey_values(model_path, tmp_path):
    from PIL import Image

    grey = pixels(1)
    Image.fromarray(np.stack([grey, np.full_like(grey, 200)], axis=-1), "LA").save(tmp_path / "la.png")
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    from MFFMTCore.files import to_grey_array

    np.testing.assert_array_equal(to_grey_array(read_image(tmp_path / "la.png")), grey.astype(np.float32))
    assert predict(model_path, tmp_path / "out", tmp_path / "la.png", tmp_path / "l.png") == 0
    rows = rows_of(tmp_path / "out")
    assert rows["la.png"][0]["p_malignant"] == rows["l.png"][0]["p_malignant"] != ""


# ------------------------------------------------------------ geometric changes are flagged (item 11)


SAMPLES = sorted((Path(__file__).resolve().parents[2] / "MFFMTCore" / "samples").glob("bus_*.png"))


def test_an_upside_down_scan_and_a_dual_view_capture_are_flagged_the_scans_are_not(model_path):
    from MFFMTCore.files import read_grey
    from MFFMTCore.inference.input_check import layout_scores
    from MFFMTCore.inference.predictor import Predictor

    assert len(SAMPLES) == 6
    scans = [read_grey(path) for path in SAMPLES]
    for scan, other in zip(scans, scans[1:] + scans[:1]):
        height = max(scan.shape[0], other.shape[0])
        left, right = (np.pad(part, ((0, height - part.shape[0]), (0, 0))) for part in (scan, other))
        dual = np.concatenate([left, np.zeros((height, 12), np.float32), right], axis=1)
        assert layout_scores(scan[np.newaxis]).max() < 1.0  # as captured: no flag
        assert layout_scores(scan[np.newaxis, ::-1, ::-1])[0, 0] >= 1.0  # turned by 180°: upside down
        assert layout_scores(dual[np.newaxis])[0, 1] >= 1.0
    predictor = Predictor(model_path)
    turned = predictor.predict(scans[0][::-1, ::-1].copy()).frames[0]
    assert turned.input_check.flagged and "upside down" in turned.input_check.reason and turned.p_malignant is None
    assert not predictor.predict(scans[0]).frames[0].input_check.flagged
    # In ROI mode the layout is not judged (a lesion box is not a scan).
    assert not predictor.predict(scans[0][::-1, ::-1].copy(), roi=(40, 40, 100, 100)).frames[0].input_check.flagged


def test_a_failed_dicom_export_leaves_no_unrecorded_file(tmp_path, dark_lesion_predictor, monkeypatch):
    """A DICOM export that fails after writing its SEG keeps the input's other results, says why in a
    note, and leaves no DICOM file behind; a run with overwrite writes them."""
    from dicom_samples import capture, ultrasound_dicom

    import MFFMTCore.inference.batch as batch
    import MFFMTCore.inference.dicom_export as dicom_export

    source = ultrasound_dicom(tmp_path / "us.dcm", capture())
    output = tmp_path / "out"

    def broken(result, directory, stem):
        (Path(directory) / f"{stem}_seg.dcm").write_bytes(b"half an export")
        raise AttributeError("'FileDataset' object has no attribute 'PatientID'")

    monkeypatch.setattr(dicom_export, "write_dicom_results", broken)
    (outcome,) = batch.predict_files(dark_lesion_predictor, [source], output, outputs=OUTPUTS).outcomes
    assert outcome.status == "done" and "dicom_report" not in outcome.outputs and "overlay" in outcome.outputs
    (entry,) = json.loads((output / "results.json").read_text())["inputs"]
    assert any("PatientID" in note for note in entry["notes"])
    assert not [name for name in os.listdir(output) if name.endswith(".dcm")]
    monkeypatch.undo()
    (outcome,) = batch.predict_files(dark_lesion_predictor, [source], output, outputs=OUTPUTS, overwrite=True).outcomes
    assert outcome.status == "done" and {"dicom_report", "overlay"} <= set(outcome.outputs)
