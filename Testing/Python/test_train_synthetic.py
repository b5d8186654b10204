"""A tiny learnable ultrasound-like dataset for the training, evaluation and DDP tests.

Benign images hold a dark disc, malignant ones a bright square; every image has its mask, pairs of
images share a near-duplicate group, two scanners alternate, and most images carry a BI-RADS grade
(partial auxiliary labels). ``write_dataset`` writes PNGs and a datalist JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image


def write_dataset(root: Path, count: int = 24, size: int = 72, seed: int = 0, normal: int = 0) -> Path:
    """Write ``count`` labelled images (and ``normal`` lesion-free ones) and return the datalist path."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size]
    items = []
    for index in range(count + normal):
        label = "normal" if index >= count else ("benign", "malignant")[index % 2]
        image = rng.normal(100, 20, (size, size)).clip(0, 255)
        lesion = np.zeros((size, size), bool)
        if label != "normal":
            radius = int(rng.integers(size // 8, size // 4))
            cy, cx = rng.integers(radius, size - radius, 2)
            if label == "benign":
                lesion = (rows - cy) ** 2 + (cols - cx) ** 2 <= radius**2
                image[lesion] = 30
            else:
                lesion = (abs(rows - cy) <= radius) & (abs(cols - cx) <= radius)
                image[lesion] = 210
        name = f"case{index:03d}"
        Image.fromarray(image.astype(np.uint8)).save(root / f"{name}.png")
        Image.fromarray((lesion * 255).astype(np.uint8)).save(root / f"{name}_mask.png")
        item = {"image": f"{name}.png", "mask": f"{name}_mask.png", "label": label, "group": f"g{index // 2}",
                "scanner": ("scanA", "scanB")[index % 3 == 0]}
        if index % 4 and label != "normal":
            item["birads"] = "2" if label == "benign" else "5"
        items.append(item)
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": items}), encoding="utf-8")
    return datalist


def test_dataset_is_readable(tmp_path):
    from MFFMTCore.data import read_dataset

    records = read_dataset(write_dataset(tmp_path, count=6, normal=2))
    assert [record.label for record in records].count("normal") == 2
    assert sum(record.birads is not None for record in records) == 4
    assert len({record.group_key() for record in records}) == 4
