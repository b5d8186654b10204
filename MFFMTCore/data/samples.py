"""From records to samples: a whole frame each, or one crop per lesion as in the paper.

Wei et al. (2024, section 2.1) derive boxes from BUSI's masks and make "each bounding box an
individual data sample"; :func:`make_samples` with ``mode="lesion"`` follows that protocol, boxes
from the connected components of the OR'ed mask (or the record's box where there is no mask),
each grown by a context margin. A sample is a plain dict that :class:`LoadUltrasoundd` reads.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import numpy as np
from scipy import ndimage

from MFFMTCore.base.choices import SAMPLE_MODES
from MFFMTCore.base.progress_bar import progress_bar
from MFFMTCore.data.records import DatasetError, SampleRecord
from MFFMTCore.files import ImageReadError, read_mask


def lesion_boxes(mask: np.ndarray, min_pixels: int = 16, min_fraction: float = 0.02) -> list[tuple[int, ...]]:
    """Boxes (x, y, w, h) of the lesions of a 2D binary mask, one per connected component.

    Annotation specks (BUSI masks carry stray single pixels) are not lesions: a component counts
    when it has at least ``min_pixels`` pixels and ``min_fraction`` of the largest one's, and the
    largest always counts.

    Returns:
        Boxes sorted top to bottom, left to right; empty for an empty mask.
    """
    components, count = ndimage.label(mask)
    if count == 0:
        return []
    sizes = ndimage.sum_labels(mask > 0, components, index=np.arange(1, count + 1))
    needed = min(max(min_pixels, min_fraction * sizes.max()), sizes.max())
    boxes = [(found[1].start, found[0].start, found[1].stop - found[1].start, found[0].stop - found[0].start)
             for found, size in zip(ndimage.find_objects(components), sizes) if size >= needed]
    return sorted(boxes, key=lambda box: (box[1], box[0]))


def make_samples(records: list[SampleRecord], mode: str = "frame", margin: float = 0.2,
                 progress: bool = False) -> list[dict[str, Any]]:
    """Turn records into the samples a :class:`MFFMTDataset` serves.

    Args:
        records: the images.
        mode: "frame", one sample per image; or "lesion", one sample per lesion box, cut out with a
            context margin (the paper's protocol). In lesion mode an image without any lesion (a
            normal image, or one with neither mask nor box) gives one whole-frame sample.
        margin: context added on each side of a lesion box, as a fraction of its width and height.
        progress: show a progress bar while lesion mode reads the masks.

    Returns:
        Dicts with the record's fields plus ``crop`` (lesion box or None) and ``margin``; lesion
        samples are named "<id>#lesion<k>".

    Raises:
        DatasetError: unknown mode, negative margin, or a mask that cannot be read.
    """
    if mode not in SAMPLE_MODES:
        raise DatasetError(mode, f"unknown sample mode (expected one of {', '.join(SAMPLE_MODES)})")
    if margin < 0:
        raise DatasetError(mode, f"the lesion margin must not be negative, got {margin}")
    samples: list[dict[str, Any]] = []
    for record in progress_bar(records, desc="finding lesions", unit="image",
                               disable=not (progress and mode == "lesion")):
        base = {**asdict(record), "crop": None, "margin": margin}
        boxes = _record_boxes(record) if mode == "lesion" else []
        if not boxes:
            samples.append(base)
        for number, box in enumerate(boxes):
            samples.append({**base, "id": f"{record.id}#lesion{number}", "crop": box})
    return samples


def _record_boxes(record: SampleRecord) -> list[tuple[int, ...]]:
    """Lesion boxes of one record: from its masks where it has some, else its box."""
    if not record.masks:
        return [tuple(record.box)] if record.box is not None else []
    try:
        mask = read_mask(record.masks)
    except ImageReadError as error:
        raise DatasetError(error.path, error.problem) from error
    return lesion_boxes(np.squeeze(mask))
