"""Coordinate systems: Slicer's RAS and ITK's LPS, image geometry, and ROI boxes in pixels.

Slicer shows the world in RAS (right, anterior, superior); ITK, SimpleITK and files written by
MFFMTCore use LPS (left, posterior, superior). The two differ by the sign of the first two axes, a
flip that is its own inverse. A volume's geometry in Slicer is one 4x4 IJK-to-RAS matrix; ITK
splits it into spacing, origin and a direction matrix.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# diag(-1, -1, 1, 1): maps RAS to LPS and LPS to RAS.
RAS_LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])


def lps_to_ras(point: Sequence[float]) -> tuple[float, float, float]:
    """A physical point in LPS (as SimpleITK and ``results.json`` give it) in Slicer's RAS."""
    x, y, z = (float(value) for value in point)
    return (-x, -y, z)


def ras_to_lps(point: Sequence[float]) -> tuple[float, float, float]:
    """A point in Slicer's RAS in LPS (the flip is its own inverse)."""
    return lps_to_ras(point)


@dataclass(frozen=True)
class ItkGeometry:
    """Image geometry as ITK stores it (all in LPS).

    Args:
        spacing: distance between voxel centres along i, j, k (mm).
        origin: physical position of voxel (0, 0, 0).
        direction: 3x3 direction cosines, row-major; column n is the direction of index axis n.
    """

    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]


def itk_geometry(ijk_to_ras: np.ndarray) -> ItkGeometry:
    """Split Slicer's IJK-to-RAS matrix into ITK's spacing, origin and direction (LPS).

    Raises:
        ValueError: the matrix is not 4x4 or an axis has zero length.
    """
    matrix = np.asarray(ijk_to_ras, dtype=float)
    if matrix.shape != (4, 4):
        raise ValueError(f"IJK-to-RAS matrix must be 4x4, got shape {matrix.shape}")
    ijk_to_lps = RAS_LPS_FLIP @ matrix
    axes = ijk_to_lps[:3, :3]
    spacing = np.linalg.norm(axes, axis=0)
    if np.any(spacing <= 0):
        raise ValueError(f"IJK-to-RAS matrix has a zero-length axis: {matrix.tolist()}")
    direction = axes / spacing
    return ItkGeometry(
        spacing=tuple(float(s) for s in spacing),
        origin=tuple(float(o) for o in ijk_to_lps[:3, 3]),
        direction=tuple(float(d) for d in direction.flatten()),
    )


def ijk_to_ras_matrix(geometry: ItkGeometry) -> np.ndarray:
    """The inverse of :func:`itk_geometry`: ITK spacing, origin and direction to IJK-to-RAS."""
    ijk_to_lps = np.eye(4)
    ijk_to_lps[:3, :3] = np.asarray(geometry.direction, dtype=float).reshape(3, 3) * np.asarray(geometry.spacing)
    ijk_to_lps[:3, 3] = geometry.origin
    return RAS_LPS_FLIP @ ijk_to_lps


def frame_ijk_to_ras(ijk_to_ras: np.ndarray, frame: int) -> np.ndarray:
    """IJK-to-RAS of frame ``frame`` (slice k) of a clip, as a one-slice volume of its own."""
    shifted = np.array(ijk_to_ras, dtype=float)
    shifted[:3, 3] = shifted[:3, 3] + frame * shifted[:3, 2]
    return shifted


def pixel_area_mm2(ijk_to_ras: np.ndarray) -> float:
    """Area of one pixel of a frame (spacing along i times spacing along j)."""
    spacing = itk_geometry(ijk_to_ras).spacing
    return spacing[0] * spacing[1]


def roi_pixel_box(ras_bounds: Sequence[float], ras_to_ijk: np.ndarray, width: int, height: int
                  ) -> tuple[int, int, int, int]:
    """The pixels of a frame that an axis-aligned RAS box covers, as ``mffmt predict --roi`` takes them.

    A pixel belongs to the box when its centre lies inside. The box may be thicker or thinner than
    the frame; only its extent along i and j matters.

    Args:
        ras_bounds: (r_min, r_max, a_min, a_max, s_min, s_max), as ``GetRASBounds`` returns them.
        ras_to_ijk: the volume's 4x4 RAS-to-IJK matrix.
        width: frame width in pixels (size along i).
        height: frame height in pixels (size along j).

    Returns:
        (x, y, w, h): first column, first row, number of columns and rows.

    Raises:
        ValueError: the bounds are malformed or the box covers no pixel of the frame.
    """
    if len(ras_bounds) != 6:
        raise ValueError(f"ROI bounds must have 6 values, got {len(ras_bounds)}")
    ranges = [(ras_bounds[0], ras_bounds[1]), (ras_bounds[2], ras_bounds[3]), (ras_bounds[4], ras_bounds[5])]
    if any(not (math.isfinite(low) and math.isfinite(high)) or low > high for low, high in ranges):
        raise ValueError(f"ROI bounds {list(ras_bounds)} do not describe a box")
    corners = np.array([[r, a, s, 1.0] for r, a, s in itertools.product(*ranges)])
    ijk = corners @ np.asarray(ras_to_ijk, dtype=float).T
    first_i = max(0, math.ceil(ijk[:, 0].min() - 1e-6))
    last_i = min(width - 1, math.floor(ijk[:, 0].max() + 1e-6))
    first_j = max(0, math.ceil(ijk[:, 1].min() - 1e-6))
    last_j = min(height - 1, math.floor(ijk[:, 1].max() + 1e-6))
    if last_i < first_i or last_j < first_j:
        raise ValueError("the ROI does not cover any pixel of the image: move it over the image")
    return first_i, first_j, last_i - first_i + 1, last_j - first_j + 1
