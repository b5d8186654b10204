"""The physical geometry of an input (spacing, origin, direction) and the maps between pixels and space.

Every output of inference (probability map, label map, Grad-CAM, Slicer segmentation) is put back on
the input's exact voxel grid with this geometry, and every physical quantity (areas in mm², centroids
in LPS coordinates as SimpleITK uses them) is computed from it.

Slicer shows the world in RAS (right, anterior, superior); ITK, SimpleITK and every file MFFMTCore
writes use LPS (left, posterior, superior). The two differ by the sign of the first two axes, a flip
that is its own inverse. A Slicer volume's geometry is one 4x4 IJK-to-RAS matrix;
:meth:`ImageGeometry.from_ijk_to_ras` turns it into ITK's spacing, origin and direction.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

# diag(-1, -1, 1, 1): maps RAS to LPS and LPS to RAS.
RAS_LPS_FLIP = np.diag([-1.0, -1.0, 1.0, 1.0])
# File formats that record a physical pixel spacing; pictures (PNG, JPEG, BMP, TIFF) get ITK's unit default.
SPACING_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd", ".dcm")


def records_spacing(path: str | os.PathLike) -> bool:
    """Whether an image file (or a DICOM folder) records a physical pixel spacing."""
    return os.path.isdir(path) or str(path).lower().endswith(SPACING_SUFFIXES)


def lps_to_ras(point) -> tuple[float, float, float]:
    """A physical point in LPS (as SimpleITK and ``results.json`` give it) in Slicer's RAS."""
    x, y, z = (float(value) for value in point)
    return (-x, -y, z)


def ras_to_lps(point) -> tuple[float, float, float]:
    """A point in Slicer's RAS in LPS (the flip is its own inverse)."""
    return lps_to_ras(point)


def frame_ijk_to_ras(ijk_to_ras: np.ndarray, frame: int) -> np.ndarray:
    """IJK-to-RAS of frame ``frame`` (slice k) of a clip, as a one-slice volume of its own."""
    shifted = np.array(ijk_to_ras, dtype=float)
    shifted[:3, 3] = shifted[:3, 3] + frame * shifted[:3, 2]
    return shifted


def pixel_area(index_to_physical: np.ndarray) -> float:
    """Area of one pixel of a frame: the parallelogram spanned by the column and row steps.

    Args:
        index_to_physical: homogeneous index-to-physical matrix (3x3 for 2D, 4x4 for 3D; RAS or
            LPS alike, the flip keeps areas).
    """
    matrix = np.asarray(index_to_physical, dtype=float)
    steps = matrix[:-1, :2]
    if steps.shape[0] == 2:
        return float(abs(np.linalg.det(steps)))
    return float(np.linalg.norm(np.cross(steps[:, 0], steps[:, 1])))


@dataclass(frozen=True)
class ImageGeometry:
    """Geometry of a 2D frame or of a 3D stack of frames, in SimpleITK's conventions.

    Args:
        spacing: pixel spacing in mm, ITK order (column, row[, frame]).
        origin: physical position (LPS, mm) of the first pixel's centre.
        direction: direction cosines, row-major, 4 (2D) or 9 (3D) values.
        spacing_known: False when the spacing is the unit default of a picture (PNG, JPEG, a plain
            array): areas are then reported in pixels only.
    """

    spacing: tuple[float, ...]
    origin: tuple[float, ...]
    direction: tuple[float, ...]
    spacing_known: bool = True

    def __post_init__(self) -> None:
        dimension = len(self.spacing)
        if dimension not in (2, 3):
            raise ValueError(f"geometry must be 2D or 3D, got spacing {self.spacing}")
        if len(self.origin) != dimension or len(self.direction) != dimension * dimension:
            raise ValueError(
                f"geometry of a {dimension}D image needs {dimension} origin and {dimension * dimension} "
                f"direction values, got {len(self.origin)} and {len(self.direction)}"
            )
        if any(value <= 0 for value in self.spacing):
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if abs(np.linalg.det(self.direction_matrix)) < 1e-6:
            raise ValueError(f"direction {self.direction} is singular")

    @classmethod
    def of(cls, image: sitk.Image, spacing_known: bool = True) -> ImageGeometry:
        """The geometry of a SimpleITK image."""
        return cls(tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()), spacing_known)

    @classmethod
    def from_ijk_to_ras(cls, ijk_to_ras: np.ndarray, spacing_known: bool = True) -> ImageGeometry:
        """The 3D geometry of a Slicer volume from its 4x4 IJK-to-RAS matrix.

        Raises:
            ValueError: the matrix is not 4x4 or an axis has zero length.
        """
        matrix = np.asarray(ijk_to_ras, dtype=float)
        if matrix.shape != (4, 4):
            raise ValueError(f"IJK-to-RAS matrix must be 4x4, got shape {matrix.shape}")
        ijk_to_lps = RAS_LPS_FLIP @ matrix
        spacing = np.linalg.norm(ijk_to_lps[:3, :3], axis=0)
        if np.any(spacing <= 0):
            raise ValueError(f"IJK-to-RAS matrix has a zero-length axis: {matrix.tolist()}")
        direction = ijk_to_lps[:3, :3] / spacing
        return cls(tuple(float(v) for v in spacing), tuple(float(v) for v in ijk_to_lps[:3, 3]),
                   tuple(float(v) for v in direction.ravel()), spacing_known)

    def ijk_to_ras(self) -> np.ndarray:
        """4x4 IJK-to-RAS matrix, as Slicer places this geometry (the inverse of :meth:`from_ijk_to_ras`)."""
        return RAS_LPS_FLIP @ self.ijk_to_lps()

    @property
    def dimension(self) -> int:
        return len(self.spacing)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(len(self.spacing), len(self.spacing))

    def index_to_physical_matrix(self) -> np.ndarray:
        """Homogeneous (d+1)x(d+1) matrix from continuous index (i, j[, k]) to physical coordinates."""
        dimension = self.dimension
        matrix = np.eye(dimension + 1)
        matrix[:dimension, :dimension] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:dimension, dimension] = self.origin
        return matrix

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 index-to-LPS matrix; a 2D frame becomes a single-slice volume in the plane z = 0.

        That is how Slicer places a 2D picture, so a 2D input's segmentation and its image coincide.
        """
        if self.dimension == 3:
            return self.index_to_physical_matrix()
        matrix = np.eye(4)
        matrix[:2, :2] = self.direction_matrix @ np.diag(self.spacing)
        matrix[:2, 3] = self.origin
        return matrix

    def to_physical(self, index: np.ndarray) -> np.ndarray:
        """Physical coordinates of continuous indices (..., d) in ITK order (i = column, j = row, k = frame)."""
        index = np.asarray(index, dtype=float)
        matrix = self.index_to_physical_matrix()
        return index @ matrix[:-1, :-1].T + matrix[:-1, -1]

    def to_index(self, point: np.ndarray) -> np.ndarray:
        """Continuous indices of physical points (..., d): the inverse of :meth:`to_physical`."""
        point = np.asarray(point, dtype=float)
        matrix = self.index_to_physical_matrix()
        return (point - matrix[:-1, -1]) @ np.linalg.inv(matrix[:-1, :-1]).T

    def pixel_area_mm2(self) -> float:
        """Physical area of one pixel of a frame (see :func:`pixel_area`)."""
        return pixel_area(self.index_to_physical_matrix())

    def apply(self, image: sitk.Image) -> sitk.Image:
        """Give ``image`` (built from an array on this grid) this geometry, in place; returns it."""
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image

    def image_from_array(self, array: np.ndarray) -> sitk.Image:
        """A SimpleITK image holding ``array`` ((H, W) for 2D, (N, H, W) for 3D) with this geometry."""
        if array.ndim != self.dimension:
            raise ValueError(f"array of shape {array.shape} does not fit a {self.dimension}D geometry")
        return self.apply(sitk.GetImageFromArray(array))

    def to_json(self) -> dict:
        return {
            "spacing": list(self.spacing),
            "origin": list(self.origin),
            "direction": list(self.direction),
            "spacing_known": self.spacing_known,
        }
