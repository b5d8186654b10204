"""Lesions in a label map: its connected components, measured in pixels and in physical units, and what
one frame's components add up to (the lesion columns of a result row)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.base.measurements import LesionMeasurements, measure_lesion

# 8-connectivity: pixels touching at a corner belong to one lesion (a thin oblique border stays whole).
_CONNECTIVITY = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LesionComponent:
    """One connected lesion region of one frame.

    Args:
        area_px: number of pixels.
        area_mm2: physical area, or None when the input's spacing is unknown.
        bbox: (x, y, w, h) in pixels of the frame (x = column, y = row).
        centroid_index: (column, row) of the region's centre, continuous pixel indices.
        centroid: physical position (x, y, z) of the centre, LPS as SimpleITK gives it; a 2D
            frame lies in the plane z = 0, as Slicer places it.
        mean_probability: mean lesion probability over the region.
        measurements: long and perpendicular diameters and orientation (see
            :mod:`MFFMTCore.base.measurements`).
    """

    area_px: int
    area_mm2: float | None
    bbox: tuple[int, int, int, int]
    centroid_index: tuple[float, float]
    centroid: tuple[float, float, float]
    mean_probability: float
    measurements: LesionMeasurements | None = None

    def to_json(self) -> dict:
        return asdict(self)


def largest_component_px(label: np.ndarray) -> int:
    """Pixels of the largest connected component (8-connected, as :func:`find_components`) of a 2D
    boolean label map; 0 when it is empty."""
    labelled, count = ndimage.label(label, structure=_CONNECTIVITY)
    return int(np.bincount(labelled.ravel(), minlength=count + 1)[1:].max()) if count else 0


def find_components(
    label: np.ndarray, probability: np.ndarray, geometry: ImageGeometry, frame: int, measurements: bool = True
) -> list[LesionComponent]:
    """Connected components (8-connected) of one frame's label map, largest first.

    Args:
        label: (H, W) boolean label map of the frame.
        probability: (H, W) lesion probability of the frame.
        geometry: the input's geometry (2D, or 3D with frames along k).
        frame: index of the frame in the stack (its k index for a 3D input).
        measurements: measure each component's axes and orientation (:func:`measure_lesion`, most of
            this function's time); False leaves ``measurements`` None.
    """
    # Lesions are a small part of a frame: label the box that holds every lesion pixel, and measure
    # each region inside its own box.
    rows_with_lesion = np.flatnonzero(label.any(axis=1))
    if rows_with_lesion.size == 0:
        return []
    columns_with_lesion = np.flatnonzero(label.any(axis=0))
    top, left = int(rows_with_lesion[0]), int(columns_with_lesion[0])
    window = (slice(top, int(rows_with_lesion[-1]) + 1), slice(left, int(columns_with_lesion[-1]) + 1))
    labelled, _ = ndimage.label(label[window], structure=_CONNECTIVITY)
    window_probability = probability[window]
    pixel_area = geometry.pixel_area_mm2() if geometry.spacing_known else None
    components = []
    for number, box in enumerate(ndimage.find_objects(labelled), start=1):
        region = labelled[box] == number
        region_rows, region_columns = np.nonzero(region)
        row0, column0 = box[0].start + top, box[1].start + left  # the box on the frame's grid
        height, width = region.shape
        area = int(region_rows.size)
        index = np.array([[region_columns.mean() + column0, region_rows.mean() + row0]])  # ITK order
        if geometry.dimension == 3:
            index = np.column_stack([index, [float(frame)]])
        physical = geometry.to_physical(index)[0]
        if geometry.dimension == 2:
            physical = np.append(physical, 0.0)
        components.append(
            LesionComponent(
                area_px=area,
                area_mm2=float(area * pixel_area) if pixel_area is not None else None,
                bbox=(column0, row0, width, height),
                centroid_index=(float(index[0, 0]), float(index[0, 1])),
                centroid=tuple(float(v) for v in physical),
                mean_probability=float(window_probability[box][region].mean(dtype=np.float64)),
                measurements=measure_lesion(region, geometry, frame, offset=(row0, column0)) if measurements else None,
            )
        )
    return sorted(components, key=lambda component: component.area_px, reverse=True)


@dataclass(frozen=True)
class LesionSummary:
    """What one frame's lesion regions add up to.

    Args:
        area_px: total lesion area in pixels.
        area_mm2: total lesion area in mm², None when the input's spacing is unknown.
        count: number of regions.
        centroid: physical centre (LPS) of the largest region, None without lesion. The largest
            region, not all lesion pixels: with two lesions, the centre of both lies on neither.
    """

    area_px: int
    area_mm2: float | None
    count: int
    centroid: tuple[float, float, float] | None

    @classmethod
    def of(cls, components: list[LesionComponent], spacing_known: bool) -> LesionSummary:
        """The summary of a frame's components (largest first, as :func:`find_components` gives them)."""
        return cls(
            area_px=sum(component.area_px for component in components),
            area_mm2=float(sum(component.area_mm2 for component in components)) if spacing_known else None,
            count=len(components),
            centroid=components[0].centroid if components else None,
        )
