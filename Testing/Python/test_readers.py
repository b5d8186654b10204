"""Readers: BUSI, BUS-BRA and datalist layouts, layout detection and the errors users see."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_data_synthetic import make_busbra, make_busi, square_mask, write_png

from MFFMTCore.data import (
    BIRADS_CLASSES,
    CLASS_INDEX,
    DatasetError,
    birads_index,
    label_index,
    read_busbra,
    read_busi,
    read_datalist,
    read_datalist_sections,
    read_dataset,
    summarize,
)
from MFFMTCore.data.readers import parse_box, parse_label

BUSBRA_ROWS = [
    {"ID": "bus_0001-l", "Case": "1", "Pathology": "malignant", "BIRADS": "4", "Device": "GE Logiq 7",
     "BBOX": "[6, 4, 14, 8]"},
    {"ID": "bus_0001-r", "Case": "1", "Pathology": "malignant", "BIRADS": "5", "Device": "GE Logiq 7",
     "BBOX": "[6,4,14,8]"},
    {"ID": "bus_0002-s", "Case": "2", "Pathology": "benign", "BIRADS": "2", "Device": "GE Logiq 5",
     "BBOX": "[1, 2, 3, 4]"},
]


def test_busi_labels_masks_and_groups(tmp_path: Path) -> None:
    root = make_busi(tmp_path, {"benign": 3, "malignant": 2, "normal": 1},
                     groups={"benign/benign (1).png": "g1", "malignant/malignant (2).png": "g1"})
    # A second lesion file, and a tenth one, to check that masks keep their numeric order.
    write_png(root / "benign" / "benign (2)_mask_1.png", square_mask((40, 48), slice(20, 30), slice(0, 5)))
    write_png(root / "benign" / "benign (2)_mask_10.png", np.zeros((40, 48)))
    write_png(root / "benign" / "benign (2)_mask_2.png", np.zeros((40, 48)))
    records = {record.id: record for record in read_busi(root)}

    assert sorted(records) == ["benign (1)", "benign (2)", "benign (3)", "malignant (1)", "malignant (2)", "normal (1)"]
    assert [Path(mask).name for mask in records["benign (2)"].masks] == [
        "benign (2)_mask.png", "benign (2)_mask_1.png", "benign (2)_mask_2.png", "benign (2)_mask_10.png"]
    assert records["malignant (1)"].label == "malignant" and records["normal (1)"].label == "normal"
    assert records["benign (1)"].group == records["malignant (2)"].group == "busi:g1"
    assert records["benign (3)"].group is None  # absent from groups.csv: its own group
    assert all(record.dataset == "BUSI" and record.scanner is None for record in records.values())


def test_busi_without_groups_csv_and_without_normal_folder(tmp_path: Path) -> None:
    records = read_dataset(make_busi(tmp_path, {"benign": 1, "malignant": 1}))
    assert [record.group for record in records] == [None, None]
    assert len({record.group_key() for record in records}) == 2


def test_busi_mask_without_image_is_named(tmp_path: Path) -> None:
    root = make_busi(tmp_path, {"benign": 1})
    write_png(root / "benign" / "benign (7)_mask.png", np.zeros((40, 48)))
    with pytest.raises(DatasetError, match=r"benign \(7\)_mask\.png"):
        read_busi(root)


def test_busbra_csv_parsing(tmp_path: Path) -> None:
    records = read_busbra(make_busbra(tmp_path, BUSBRA_ROWS))
    first = records[0]
    assert first.id == "bus_0001-l" and first.label == "malignant" and first.birads == "4"
    assert first.box == (6, 4, 14, 8) and records[1].box == (6, 4, 14, 8)
    assert first.group == records[1].group == "busbra:1" and records[2].group == "busbra:2"
    assert first.scanner == "GE Logiq 7" and first.dataset == "BUS-BRA"
    assert Path(first.image).name == "bus_0001-l.png" and Path(first.masks[0]).name == "mask_0001-l.png"


def test_busbra_missing_files_are_listed(tmp_path: Path) -> None:
    root = make_busbra(tmp_path, BUSBRA_ROWS)
    (root / "Masks" / "mask_0002-s.png").unlink()
    (root / "Images" / "bus_0001-r.png").unlink()
    with pytest.raises(DatasetError, match="2 problems") as caught:
        read_busbra(root)
    assert "mask_0002-s.png" in str(caught.value) and "bus_0001-r.png" in str(caught.value)


def test_datalist_json_with_missing_fields(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "img" / "b.png", np.zeros((8, 8)))
    write_png(tmp_path / "img" / "a_mask.png", np.zeros((8, 8)))
    write_png(tmp_path / "img" / "a_mask2.png", np.zeros((8, 8)))
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({
        "training": [{"image": "img/a.png", "mask": ["img/a_mask.png", "img/a_mask2.png"], "label": 1,
                      "box": [1, 2, 3, 4], "birads": 4, "patient": "p7", "scanner": "X"}],
        "validation": [{"image": str(tmp_path / "img" / "b.png")}],
        "test": [{"image": "img/b.png"}]}))
    records = read_datalist(datalist)
    assert len(records) == 2  # the unlabelled "test" section is not training data
    full, bare = records
    assert full.id == "img/a" and full.label == "malignant" and full.box == (1, 2, 3, 4)
    assert full.masks == [str(tmp_path / "img" / "a_mask.png"), str(tmp_path / "img" / "a_mask2.png")]
    assert full.birads == "4" and full.group == "list:p7" and full.scanner == "X" and full.dataset == "list"
    assert bare.label is None and bare.masks == [] and bare.box is None and bare.group is None
    assert bare.birads is None and bare.scanner is None
    assert [len(part) for part in read_datalist_sections(datalist).values()] == [1, 1, 1]
    bare_list = tmp_path / "bare.json"
    bare_list.write_text(json.dumps([{"image": "img/b.png", "label": "Normal"}]))
    assert read_dataset(bare_list)[0].label == "normal"


def test_datalist_csv_with_missing_fields(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    write_png(tmp_path / "m1.png", np.zeros((8, 8)))
    write_png(tmp_path / "m2.png", np.zeros((8, 8)))
    datalist = tmp_path / "list.csv"
    datalist.write_text("image,mask,label,box,birads,group,scanner\n"
                        'a.png,m1.png;m2.png,benign,"[1, 2, 3, 4]",3,g1,S\n'
                        "a.png,,,,,,\n")
    full, bare = read_dataset(datalist)
    assert full.masks == [str(tmp_path / "m1.png"), str(tmp_path / "m2.png")]
    assert (full.label, full.box, full.birads, full.group, full.scanner) == ("benign", (1, 2, 3, 4), "3", "list:g1", "S")
    assert (bare.masks, bare.label, bare.box, bare.birads, bare.group, bare.scanner) == ([], None, None, None, None, None)


def test_datalist_missing_mask_is_named(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    datalist = tmp_path / "list.csv"
    datalist.write_text("image,mask\na.png,gone_mask.png\n")
    with pytest.raises(DatasetError, match="mask file not found: .*gone_mask.png"):
        read_datalist(datalist)
    datalist.write_text("image\nmissing.png\n")
    with pytest.raises(DatasetError, match="image file not found: .*missing.png"):
        read_datalist(datalist)


@pytest.mark.parametrize("content, problem", [
    ("label\nbenign\n", "missing column"),
    ("image,label\na.png,maybe\n", "unknown label"),
    ("image,box\na.png,\"[1, 2]\"\n", "four numbers"),
    ("image\n", "lists no images"),
])
def test_datalist_bad_content(tmp_path: Path, content: str, problem: str) -> None:
    write_png(tmp_path / "a.png", np.zeros((8, 8)))
    datalist = tmp_path / "list.csv"
    datalist.write_text(content)
    with pytest.raises(DatasetError, match=problem) as caught:
        read_datalist(datalist)
    assert str(datalist) in str(caught.value)


def test_read_dataset_detects_layouts_and_refuses_others(tmp_path: Path) -> None:
    assert read_dataset(make_busbra(tmp_path / "bra", BUSBRA_ROWS))[0].dataset == "BUS-BRA"
    assert read_dataset(make_busi(tmp_path / "busi", {"malignant": 1}))[0].dataset == "BUSI"
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="unknown dataset layout"):
        read_dataset(tmp_path / "other")
    with pytest.raises(DatasetError, match="not found"):
        read_dataset(tmp_path / "absent")
    (tmp_path / "empty" / "benign").mkdir(parents=True)
    with pytest.raises(DatasetError, match="no images"):
        read_dataset(tmp_path / "empty")


def test_parse_helpers() -> None:
    assert parse_box("[91, 24, 103, 79]") == (91, 24, 103, 79)
    assert parse_box([1.0, 2.4, 3, 4]) == (1, 2, 3, 4) and parse_box("") is None
    assert parse_label(0) == "benign" and parse_label("1") == "malignant" and parse_label("NaN") is None


def test_summarize_counts_per_dataset_label_and_scanner(tmp_path: Path) -> None:
    records = read_busbra(make_busbra(tmp_path / "bra", BUSBRA_ROWS)) + read_busi(make_busi(tmp_path / "busi", {"normal": 2}))
    summary = summarize(records)
    assert summary["images"] == 5 and summary["labels"] == {"benign": 1, "malignant": 2, "normal": 2}
    assert summary["datasets"]["BUS-BRA"]["scanners"] == {"GE Logiq 5": 1, "GE Logiq 7": 2}
    assert summary["datasets"]["BUSI"] == {"images": 2, "labels": {"normal": 2}, "scanners": {"unknown": 2}}
    assert json.loads(json.dumps(summary)) == summary


def test_class_and_birads_indices() -> None:
    assert [label_index(name) for name in ("benign", "malignant", "normal", None)] == [0, 1, -1, -1]
    assert [birads_index(grade) for grade in ("2", "3", "4", "4c", "5", "6", "", None)] == [0, 1, 2, 2, 3, -1, -1, -1]
    assert BIRADS_CLASSES == ["2", "3", "4", "5"] and CLASS_INDEX == {"benign": 0, "malignant": 1}
