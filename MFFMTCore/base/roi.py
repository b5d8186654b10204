"""Regions of interest: the box a user draws around a lesion, in pixels or in physical space.

In ROI mode (the paper's protocol, section 2.1: the classifier sees the lesion's box region) the
predictor classifies and segments the box only, and pastes its lesion map back into the full frame.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.errors import MFFMTError


@dataclass(frozen=True)
class PhysicalBox:
    """An axis-aligned box in physical space (LPS, mm), given by two opposite corners.

    A Slicer ROI node's bounds are in RAS: negate x and y to get LPS. Only the in-frame axes matter:
    the box selects the same pixel region in every frame of a clip.
    """

    corner_a: tuple[float, ...]
    corner_b: tuple[float, ...]

    def to_pixels(self, geometry: ImageGeometry) -> tuple[int, int, int, int]:
        """The smallest pixel box (x, y, w, h) holding every pixel centre the physical box covers.

        With a rotated direction the physical box is not aligned with the pixel grid; the bounding
        box of its corners' indices is used, so no part of the drawn region is lost.
        """
        dimension = geometry.dimension
        if len(self.corner_a) < dimension or len(self.corner_b) < dimension:
            raise ValueError(f"box corners {self.corner_a}, {self.corner_b} need {dimension} coordinates")
        pairs = [(a, b) for a, b in zip(self.corner_a[:dimension], self.corner_b[:dimension])]
        corners = np.array(list(itertools.product(*pairs)), dtype=float)
        index = geometry.to_index(corners)[:, :2]
        low = np.ceil(index.min(axis=0) - 1e-6).astype(int)
        high = np.floor(index.max(axis=0) + 1e-6).astype(int)
        return int(low[0]), int(low[1]), int(high[0] - low[0] + 1), int(high[1] - low[1] + 1)


RoiInput = Sequence[int] | PhysicalBox


def resolve_roi(
    roi: RoiInput | None, geometry: ImageGeometry, frame_shape: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """A pixel box (x, y, w, h) inside the frame, from a pixel box or a :class:`PhysicalBox`.

    A box reaching past the frame's edge is cut to the frame.

    Raises:
        MFFMTError: the box is malformed, empty, or does not overlap the frame.
    """
    if roi is None:
        return None
    if isinstance(roi, PhysicalBox):
        roi = roi.to_pixels(geometry)
    if len(roi) != 4 or any(int(v) != v for v in roi):
        raise MFFMTError("ROI", f"must be four whole numbers x, y, w, h (pixels), got {tuple(roi)}")
    x, y, w, h = (int(v) for v in roi)
    if w <= 0 or h <= 0:
        raise MFFMTError("ROI", f"width and height must be positive, got {w}x{h}")
    height, width = frame_shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 <= x0 or y1 <= y0:
        raise MFFMTError(f"ROI {(x, y, w, h)}", f"lies outside the {width}x{height} frame")
    return x0, y0, x1 - x0, y1 - y0
