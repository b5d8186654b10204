"""Training data from the Slicer scene: volumes, their lesion masks and labels -> a training datalist.

The user marks volumes in the scene as benign, malignant or normal and segments the lesions; the
module exports voxel arrays and this module writes them as image and mask files plus a datalist
JSON in the project's format (``{"training": [{"image", "mask", "label", "group", ...}]}``, paths
relative to the datalist, dataset "slicer") that ``mffmt train --data`` reads.

A volume of several frames (a clip) becomes one training item per frame, all in one split group
so that frames of a clip never land on both sides of the train/validation split. In a clip only
the frames with a segmented lesion are used when a mask is given: the others were most likely
not annotated, not lesion-free.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from MFFMTCore.base.geometry import frame_ijk_to_ras
from MFFMTCore.base.labels import IMAGE_LABELS
from MFFMTSlicerLib.volumes import write_volume


@dataclass
class SceneVolume:
    """One volume of the scene as training material.

    Args:
        name: node name (used for file names and the split group).
        image: (k, j, i) or (k, j, i, c) voxels.
        ijk_to_ras: the volume's 4x4 IJK-to-RAS matrix.
        label: "benign", "malignant", "normal" or None (no class label).
        mask: (k, j, i) lesion mask in the volume's geometry (non-zero = lesion), or None.
    """

    name: str
    image: np.ndarray
    ijk_to_ras: np.ndarray
    label: str | None = None
    mask: np.ndarray | None = None


@dataclass
class TrainingExport:
    """What :func:`write_training_datalist` wrote: the datalist, its item count and skipped volumes."""

    datalist: Path
    items: int
    skipped: list[str] = field(default_factory=list)


def _file_stem(index: int, name: str) -> str:
    return f"{index:03d}_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "volume")


def _frames_to_use(volume: SceneVolume) -> tuple[list[int], bool]:
    """Which frames of ``volume`` become training items, and whether they carry a mask.

    Raises:
        ValueError: the label is unknown, the mask does not fit the image, or a volume labelled
            normal has a lesion mask.
    """
    frames = volume.image.shape[0]
    if volume.label is not None and volume.label not in IMAGE_LABELS:
        raise ValueError(f"{volume.name}: label must be one of {', '.join(IMAGE_LABELS)}, got {volume.label!r}")
    if volume.mask is None:
        if volume.label is None:
            return [], False
        # A normal image teaches "no lesion" through an empty mask; benign/malignant teach the class only.
        return list(range(frames)), volume.label == "normal"
    if volume.mask.shape != volume.image.shape[:3]:
        raise ValueError(f"{volume.name}: mask shape {volume.mask.shape} differs from image shape "
                         f"{volume.image.shape[:3]}")
    with_lesion = [k for k in range(frames) if np.any(volume.mask[k])]
    if volume.label == "normal":
        if with_lesion:
            raise ValueError(f"{volume.name}: labelled normal but its segmentation has a lesion")
        return list(range(frames)), True
    if not with_lesion:
        # Nothing segmented: a class label alone still teaches the classifier.
        return (list(range(frames)), False) if volume.label is not None else ([], False)
    return with_lesion, True


def write_training_datalist(volumes: list[SceneVolume], output_dir: str | os.PathLike) -> TrainingExport:
    """Write images, masks and ``datalist.json`` for ``volumes`` into ``output_dir``.

    Raises:
        ValueError: a volume is inconsistent (see the message), or no volume gives a training item.
    """
    from MFFMTCore.files import write_text_atomic

    output_dir = Path(output_dir)
    items, skipped = [], []
    for index, volume in enumerate(volumes):
        frames, with_mask = _frames_to_use(volume)
        if not frames:
            skipped.append(f"{volume.name}: no class label and no segmented lesion")
            continue
        stem = _file_stem(index, volume.name)
        mask = volume.mask if volume.mask is not None else np.zeros(volume.image.shape[:3], np.uint8)
        for k in frames:
            frame_stem = stem if volume.image.shape[0] == 1 else f"{stem}_frame{k:04d}"
            geometry = frame_ijk_to_ras(volume.ijk_to_ras, k)
            image_path = write_volume(volume.image[k:k + 1], geometry, output_dir / f"{frame_stem}.nrrd", compress=True)
            # The datalist reader prefixes the group with the dataset: "slicer:<volume name>".
            item = {"image": image_path.name, "dataset": "slicer", "group": volume.name}
            if with_mask:
                mask_frame = (mask[k:k + 1] != 0).astype(np.uint8)
                item["mask"] = write_volume(mask_frame, geometry, output_dir / f"{frame_stem}_mask.nrrd",
                                            compress=True).name
            if volume.label is not None:
                item["label"] = volume.label
            items.append(item)
    if not items:
        reasons = "; ".join(skipped) or "no volumes given"
        raise ValueError(f"no training data in the scene: {reasons}")
    datalist = output_dir / "datalist.json"
    write_text_atomic(datalist, json.dumps({"training": items}, indent=1))
    return TrainingExport(datalist, len(items), skipped)
