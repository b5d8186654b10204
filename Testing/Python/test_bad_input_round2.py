"""Round 2 of the hostile-user promises (issue 21): reruns never go stale, a kill never blocks an input,
long names and huge images do not stop a batch, flagged frames carry no answer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MFFMTCore.cli import main
from MFFMTCore.files import ImageReadError, image_files, read_image


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
