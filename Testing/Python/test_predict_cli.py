"""`mffmt predict`: output files, results tables, failures in a batch, reruns, inputs left untouched."""

from __future__ import annotations

import csv
import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch

from MFFMTCore import model_file
from MFFMTCore.base.progress_events import EVENT_FIELDS
from MFFMTCore.cli import main


@pytest.fixture
def inputs(tmp_path):
    """Two PNGs with the same name in two folders, an NRRD clip with a real geometry, a corrupt PNG."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "inputs"
    for name in ("left", "right"):
        (folder / name).mkdir(parents=True)
        sitk.WriteImage(sitk.GetImageFromArray(rng.integers(0, 255, (40, 56), dtype=np.uint8)),
                        str(folder / name / "frame.png"))
    clip = sitk.GetImageFromArray(rng.integers(0, 255, (3, 36, 48), dtype=np.uint8))
    clip.SetSpacing((0.15, 0.25, 2.0))
    clip.SetOrigin((5.0, -3.0, 1.0))
    c, s = math.cos(0.4), math.sin(0.4)
    clip.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(clip, str(folder / "clip.nrrd"))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return folder


def digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_batch_writes_every_output_and_reports_the_corrupt_file(model_path, inputs, tmp_path, capsys):
    before = digest(inputs)
    output = tmp_path / "out"
    status = main(["predict", str(inputs), "--output", str(output), "--model", str(model_path),
                   "--gradcam", "--progress", "none"])
    assert status == 1  # one input failed
    assert "corrupt.png" in capsys.readouterr().err
    assert digest(inputs) == before  # inputs never written to

    stems = ["clip", "frame_left", "frame_right"]  # same file name: the parent folder tells them apart
    for stem in stems:
        for suffix in (".seg.nrrd", "_probability.nrrd", "_overlay.png", "_gradcam.nrrd"):
            assert (output / f"{stem}{suffix}").is_file(), f"{stem}{suffix} missing"
    assert not list(output.glob(".*"))  # no temporary files left

    rows = read_csv(output / "results.csv")
    assert list(rows[0]) == ["input", "frame", "p_benign", "p_malignant", "prediction", "lesion_present", "p_lesion",
                             "lesion_area_mm2", "lesion_area_px", "components", "centroid_x", "centroid_y", "centroid_z",
                             "long_axis_mm", "perpendicular_axis_mm", "long_axis_px", "perpendicular_axis_px",
                             "orientation", "input_flagged", "input_score", "input_reason", "error"]
    by_input = {}
    for row in rows:
        by_input.setdefault(Path(row["input"]).relative_to(inputs).as_posix(), []).append(row)
    assert [row["frame"] for row in by_input["clip.nrrd"]] == ["0", "1", "2"]
    (error,) = by_input["corrupt.png"]
    assert "corrupt.png" in error["error"] and error["frame"] == ""
    for row in by_input["left/frame.png"] + by_input["clip.nrrd"]:
        assert row["error"] == ""
        assert float(row["p_benign"]) + float(row["p_malignant"]) == pytest.approx(1.0, abs=1e-5)
        assert row["prediction"] in ("benign", "malignant")
    assert by_input["left/frame.png"][0]["lesion_area_mm2"] == ""  # PNG: spacing unknown
    for row in by_input["clip.nrrd"]:  # NRRD: spacing known, area in mm²
        assert float(row["lesion_area_mm2"]) == pytest.approx(int(row["lesion_area_px"]) * 0.15 * 0.25, rel=1e-3)

    document = json.loads((output / "results.json").read_text())
    assert document["model"]["class_names"] == ["benign", "malignant"]
    assert document["model"]["input_size"] == [64, 64]
    entries = {Path(entry["input"]).name: entry for entry in document["inputs"]}
    assert entries["clip.nrrd"]["clip"]["num_frames"] == 3
    assert entries["clip.nrrd"]["clip"]["aggregation"] in ("lesion-weighted mean", "mean")
    assert entries["corrupt.png"]["status"] == "failed"
    assert len(document["rows"]) == len(rows)


def test_segmentation_file_opens_in_slicerio_with_the_input_geometry(model_path, inputs, tmp_path):
    output = tmp_path / "out"
    main(["predict", str(inputs / "clip.nrrd"), str(inputs / "left" / "frame.png"), "--output", str(output),
          "--model", str(model_path), "--lesion-threshold", "0.3", "--progress", "none"])
    clip = sitk.ReadImage(str(inputs / "clip.nrrd"))
    segmentation = slicerio.read_segmentation(str(output / "clip.seg.nrrd"))
    (segment,) = segmentation["segments"]
    assert segment["name"] == "Lesion"
    assert segment["terminology"]["type"] == ["SCT", "4147007", "Mass"]
    assert segmentation["voxels"].shape == clip.GetSize()  # (i, j, k)
    expected = np.eye(4)
    expected[:3, :3] = np.reshape(clip.GetDirection(), (3, 3)) @ np.diag(clip.GetSpacing())
    expected[:3, 3] = clip.GetOrigin()
    np.testing.assert_allclose(segmentation["ijkToLPS"], expected, atol=1e-9)

    probability = sitk.ReadImage(str(output / "clip_probability.nrrd"))
    assert probability.GetPixelID() == sitk.sitkFloat32 and probability.GetSize() == clip.GetSize()
    np.testing.assert_allclose(probability.GetDirection(), clip.GetDirection())
    # The segmentation is the probability map at the chosen threshold, voxel for voxel.
    voxels = segmentation["voxels"].transpose(2, 1, 0)
    np.testing.assert_array_equal(voxels > 0, sitk.GetArrayFromImage(probability) >= 0.3)

    # A 2D picture becomes a single-slice segmentation at z = 0 with the picture's grid.
    frame = slicerio.read_segmentation(str(output / "frame.seg.nrrd"))
    assert frame["voxels"].shape == (56, 40, 1)
    np.testing.assert_allclose(frame["ijkToLPS"], np.eye(4))


def test_rerun_skips_finished_inputs_and_overwrite_redoes_them(model_path, inputs, tmp_path, capsys):
    output = tmp_path / "out"
    options = ["--output", str(output), "--model", str(model_path)]
    arguments = ["predict", str(inputs / "left"), *options]
    assert main([*arguments, "--progress", "none"]) == 0
    written = {path.name: path.stat().st_mtime_ns for path in output.iterdir()}
    rows = read_csv(output / "results.csv")

    assert main(["predict", str(inputs / "left"), str(inputs / "right"), *options, "--progress", "json"]) == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["event"] for event in events] == ["start", "progress", "progress", "done"]
    assert all(set(event) <= set(EVENT_FIELDS) for event in events)
    assert [(event["done"], event["total"], event["status"]) for event in events[1:3]] == [(1, 2, "skipped"),
                                                                                           (2, 2, "done")]
    assert {key: value for key, value in events[-1].items() if key != "time"} == {
        "event": "done", "total": 2, "done": 1, "skipped": 1, "failed": 0, "output": str(output)}
    for name, mtime in written.items():
        if name.startswith("frame"):
            assert (output / name).stat().st_mtime_ns == mtime, f"{name} was rewritten"
    rerun_rows = read_csv(output / "results.csv")
    assert rerun_rows[0] == rows[0]  # the earlier row is kept as it was
    assert len(rerun_rows) == 2

    assert main([*arguments, "--overwrite", "--progress", "none"]) == 0
    assert (output / "frame.seg.nrrd").stat().st_mtime_ns != written["frame.seg.nrrd"]

    # Another threshold is another result: the input is done again. (--threshold, the old name of
    # --lesion-threshold, still works with a warning.)
    assert main([*arguments, "--threshold", "0.7", "--progress", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out.splitlines()[1])["status"] == "done"
    assert "--threshold is deprecated; use --lesion-threshold" in captured.err


def test_roi_option_and_bad_options(model_path, inputs, tmp_path, capsys):
    output = tmp_path / "out"
    threads = torch.get_num_threads()
    assert main(["predict", str(inputs / "left" / "frame.png"), "--output", str(output), "--model",
                 str(model_path), "--roi", "10,4,40,33", "--lesion-threshold", "0.01", "--progress", "none",
                 "--threads", "1", "--batch-size", "2"]) == 0
    assert torch.get_num_threads() == 1
    torch.set_num_threads(threads)
    probability = sitk.GetArrayFromImage(sitk.ReadImage(str(output / "frame_probability.nrrd")))
    outside = np.ones_like(probability, dtype=bool)
    outside[4:37, 10:50] = False
    assert (probability[outside] == 0).all() and (probability[~outside] > 0).all()
    assert json.loads((output / "results.json").read_text())["inputs"][0]["roi"] == [10, 4, 40, 33]

    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--output", str(output), "--roi", "1,2,3"])
    assert "X,Y,W,H" in capsys.readouterr().err


def test_without_a_model_it_says_what_to_do(inputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(model_file, "default_model_path", lambda: None)
    assert main(["predict", str(inputs / "left"), "--output", str(tmp_path / "out")]) == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.realdata
def test_two_real_busbra_images(model_path, shared_data, tmp_path):
    images = shared_data / "busbra" / "Images"
    files = [images / "bus_0001-l.png", images / "bus_0003-r.png"]
    output = tmp_path / "out"
    assert main(["predict", *map(str, files), "--output", str(output), "--model", str(model_path),
                 "--progress", "none"]) == 0
    rows = read_csv(output / "results.csv")
    assert [Path(row["input"]).name for row in rows] == [file.name for file in files]
    for file in files:
        source = sitk.ReadImage(str(file))
        segmentation = slicerio.read_segmentation(str(output / f"{file.stem}.seg.nrrd"))
        assert segmentation["voxels"].shape == (*source.GetSize(), 1)
        assert (output / f"{file.stem}_overlay.png").is_file()
