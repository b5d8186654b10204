"""The measurements a breast-ultrasound report gives for a lesion: two diameters and the orientation.

For one lesion region of one frame:

- **long axis**: the longest diameter, the largest distance between two points of the region's
  outline (pixel corners, so a region n pixels wide measures n pixels), in mm where the spacing is
  known and in pixels always;
- **perpendicular axis**: the longest diameter perpendicular to the long axis: the region is cut by
  lines perpendicular to the long axis, one per pixel step along it, and the longest cut (from
  the region's first to its last pixel on that line) is taken; its ends are where calipers go;
- **orientation** (BI-RADS): ``"parallel"`` when the region is wider (along the image rows, parallel
  to the skin at the top of a B-mode image) than tall (along the depth), ``"not parallel"``
  otherwise (taller than wide, a sign of malignancy). Width and depth are the region's extents in
  physical units (pixels where the spacing is unknown, which assumes square pixels).

Every length is measured in the plane of the frame, with its physical pixel steps (spacing and
direction), so anisotropic pixels measure right. Caliper ends are given as continuous pixel
indices and as physical points (LPS, as the centroids), ready to be drawn as line markups.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError

from MFFMTCore.base.geometry import ImageGeometry

PARALLEL = "parallel"
NOT_PARALLEL = "not parallel"


@dataclass(frozen=True)
class Caliper:
    """A measured diameter: a segment between two points of the frame.

    Args:
        start_index, end_index: (column, row) continuous pixel indices of the ends.
        start, end: physical positions (x, y, z) of the ends, LPS; a 2D frame lies in the plane z = 0.
        length_px: length in pixels (pixel steps along columns and rows count as 1).
        length_mm: physical length, or None when the spacing is unknown.
    """

    start_index: tuple[float, float]
    end_index: tuple[float, float]
    start: tuple[float, float, float]
    end: tuple[float, float, float]
    length_px: float
    length_mm: float | None


@dataclass(frozen=True)
class LesionMeasurements:
    """Diameters and orientation of one lesion region (see the module docstring).

    Args:
        long_axis: the longest diameter.
        perpendicular_axis: the longest diameter perpendicular to it.
        orientation: ``"parallel"`` (wider than tall) or ``"not parallel"``.
        depth_to_width: the region's depth over its width (> 1: taller than wide).
        long_axis_angle: angle of the long axis to the image rows, degrees in [0, 90].
    """

    long_axis: Caliper
    perpendicular_axis: Caliper
    orientation: str
    depth_to_width: float
    long_axis_angle: float


def _in_plane_steps(geometry: ImageGeometry) -> tuple[float, float]:
    """Physical length (mm) of one pixel step along columns and along rows."""
    matrix = geometry.direction_matrix * np.asarray(geometry.spacing)
    return float(np.linalg.norm(matrix[:, 0])), float(np.linalg.norm(matrix[:, 1]))


def _pixel_corners(rows: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """(4n, 2) (column, row) corners of the given pixels."""
    offsets = np.array([[-0.5, -0.5], [0.5, -0.5], [-0.5, 0.5], [0.5, 0.5]])
    centres = np.column_stack([columns, rows]).astype(float)
    return (centres[:, None, :] + offsets[None]).reshape(-1, 2)


def _caliper(
    start: np.ndarray, end: np.ndarray, scale: np.ndarray, geometry: ImageGeometry, frame: int
) -> Caliper:
    """A caliper between two points given in scaled (mm-like) in-plane coordinates."""
    index = np.stack([start, end]) / scale
    full = index if geometry.dimension == 2 else np.column_stack([index, np.full(2, float(frame))])
    physical = geometry.to_physical(full)
    if geometry.dimension == 2:
        physical = np.column_stack([physical, np.zeros(2)])
    length = float(np.linalg.norm(end - start))
    return Caliper(
        start_index=(float(index[0, 0]), float(index[0, 1])),
        end_index=(float(index[1, 0]), float(index[1, 1])),
        start=tuple(float(v) for v in physical[0]),
        end=tuple(float(v) for v in physical[1]),
        length_px=float(np.linalg.norm(index[1] - index[0])),
        length_mm=length if geometry.spacing_known else None,
    )


def measure_lesion(
    mask: np.ndarray, geometry: ImageGeometry, frame: int = 0, offset: tuple[int, int] = (0, 0)
) -> LesionMeasurements:
    """Long axis, perpendicular axis and orientation of one lesion region.

    Args:
        mask: (H, W) boolean map of the region (one connected lesion) on the frame's pixel grid, or
            a part of that grid holding the whole region (its bounding box: measuring a small
            lesion then does not scan the whole frame).
        geometry: the input's geometry (2D, or 3D with frames along k).
        frame: the frame's index in the stack (its k index for a 3D input).
        offset: (row, column) of ``mask[0, 0]`` on the frame's grid.

    Raises:
        ValueError: the mask is empty.
    """
    if not mask.any():
        raise ValueError("cannot measure an empty lesion region")
    # Every extreme point (outline, cut ends, extents) is a corner of a pixel on the region's border.
    # Outside the mask counts as background (binary_erosion's border), so a crop measures as the frame.
    rows, columns = np.nonzero(mask & ~ndimage.binary_erosion(mask))
    rows, columns = rows + offset[0], columns + offset[1]
    # Work in physical in-plane units; with an unknown spacing the steps are 1 (pixels).
    scale = np.asarray(_in_plane_steps(geometry))
    corners = _pixel_corners(rows, columns) * scale
    try:
        outline = corners[ConvexHull(corners).vertices]
    except QhullError:  # corners of a single row or column of pixels are still 2D; kept as a guard
        outline = corners
    distances = np.linalg.norm(outline[:, None, :] - outline[None, :, :], axis=-1)
    first, second = np.unravel_index(int(np.argmax(distances)), distances.shape)
    start, end = outline[first], outline[second]
    if start[0] > end[0] or (start[0] == end[0] and start[1] > end[1]):  # left to right, for stable output
        start, end = end, start
    along = (end - start) / np.linalg.norm(end - start)
    across = np.array([-along[1], along[0]])

    # Cut the region by lines perpendicular to the long axis, one per pixel step along it; a cut runs
    # from the first to the last border pixel corner of its strip.
    centres = np.column_stack([columns, rows]).astype(float) * scale
    position = (centres - start) @ along
    step = float(scale.min())
    bins = np.floor(position / step).astype(int)
    offsets = ((corners - start) @ across).reshape(-1, 4)
    low = offsets.min(axis=1)
    high = offsets.max(axis=1)
    order = np.unique(bins)
    lowest = np.full(order.size, np.inf)
    highest = np.full(order.size, -np.inf)
    slot = np.searchsorted(order, bins)
    np.minimum.at(lowest, slot, low)
    np.maximum.at(highest, slot, high)
    extent = highest - lowest
    # Near-equal cuts (within half a pixel) are ties: take the middle one, where a reader puts calipers.
    ties = np.flatnonzero(extent >= extent.max() - 0.5 * step)
    best = int(ties[len(ties) // 2])
    middle = float(position[slot == best].mean())
    cut_start = start + along * middle + across * lowest[best]
    cut_end = start + along * middle + across * highest[best]
    if cut_start[1] > cut_end[1]:  # top to bottom
        cut_start, cut_end = cut_end, cut_start

    width = float(corners[:, 0].max() - corners[:, 0].min())
    depth = float(corners[:, 1].max() - corners[:, 1].min())
    angle = float(np.degrees(np.arctan2(abs(along[1]), abs(along[0]))))
    return LesionMeasurements(
        long_axis=_caliper(start, end, scale, geometry, frame),
        perpendicular_axis=_caliper(cut_start, cut_end, scale, geometry, frame),
        orientation=PARALLEL if width > depth else NOT_PARALLEL,
        depth_to_width=depth / width,
        long_axis_angle=angle,
    )
