"""Tiny synthetic datasets on disk for the data tests (no test functions of its own but one self-check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def write_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write ``array`` as a PNG (uint8 grey unless ``mode`` says otherwise, e.g. "1", "RGB", "RGBA")."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.asarray(array, dtype=np.uint8))
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def square_mask(shape: tuple[int, int], rows: slice, cols: slice, value: int = 255) -> np.ndarray:
    mask = np.zeros(shape, dtype=np.uint8)
    mask[rows, cols] = value
    return mask


def make_busi(root: Path, counts: dict[str, int], shape: tuple[int, int] = (40, 48),
              groups: dict[str, str] | None = None) -> Path:
    """A BUSI-layout folder: ``counts[label]`` images per label, each with one mask (empty for normal).

    ``groups`` maps "label/label (i).png" to a group name written into groups.csv.
    """
    rng = np.random.default_rng(0)
    for label, count in counts.items():
        for number in range(1, count + 1):
            name = f"{label} ({number})"
            write_png(root / label / f"{name}.png", rng.integers(0, 255, shape))
            lesion = (slice(0, 0), slice(0, 0)) if label == "normal" else (slice(5, 15), slice(10, 22))
            write_png(root / label / f"{name}_mask.png", square_mask(shape, *lesion))
    if groups is not None:
        lines = ["image,label,group"] + [f"{image},{image.split('/')[0]},{group}" for image, group in groups.items()]
        (root / "groups.csv").write_text("\n".join(lines) + "\n")
    return root


def make_busbra(root: Path, rows: list[dict[str, str]], shape: tuple[int, int] = (40, 48)) -> Path:
    """A BUS-BRA-layout folder from bus_data.csv rows (keys ID, Case, Pathology, BIRADS, Device, BBOX)."""
    columns = ["ID", "Case", "Histology", "Pathology", "BIRADS", "Device", "Width", "Height", "Side", "BBOX"]
    lines = [",".join(columns)]
    for row in rows:
        identifier = row["ID"]
        write_png(root / "Images" / f"{identifier}.png", np.full(shape, 90))
        write_png(root / "Masks" / f"{identifier.replace('bus_', 'mask_')}.png",
                  square_mask(shape, slice(4, 12), slice(6, 20)))
        values = {"Histology": "fibroadenoma", "Width": str(shape[1]), "Height": "999", "Side": "left", **row}
        lines.append(",".join(f'"{values.get(column, "")}"' for column in columns))
    (root / "bus_data.csv").write_text("\n".join(lines) + "\n")
    return root


def test_make_busi_writes_images_and_masks(tmp_path: Path) -> None:
    root = make_busi(tmp_path, {"benign": 2})
    assert sorted(path.name for path in (root / "benign").iterdir()) == [
        "benign (1).png", "benign (1)_mask.png", "benign (2).png", "benign (2)_mask.png"]
