"""Lesion diameters and orientation: known shapes, anisotropic pixels, rotated and 3D geometry, results table."""

from __future__ import annotations

import math

import numpy as np
import pytest

from MFFMTCore.base.measurements import NOT_PARALLEL, PARALLEL, measure_lesion
from MFFMTCore.base.results_schema import MEASUREMENT_COLUMNS, result_columns
from MFFMTCore.inference import ImageGeometry, find_components
from MFFMTCore.inference.result import PredictionResult
from MFFMTCore.inference.results_table import frame_rows

PLAIN = ImageGeometry((1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0), spacing_known=False)


def ellipse(shape, centre, semi_long, semi_short, angle_deg, step=(1.0, 1.0)):
    """Boolean ellipse (physical semi-axes in units of ``step``) rotated by ``angle_deg`` from the rows."""
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    x = (columns - centre[0]) * step[0]
    y = (rows - centre[1]) * step[1]
    a = math.radians(angle_deg)
    u = x * math.cos(a) + y * math.sin(a)
    v = -x * math.sin(a) + y * math.cos(a)
    return (u / semi_long) ** 2 + (v / semi_short) ** 2 <= 1.0


@pytest.mark.parametrize("angle", [0, 30, 75, 90])
def test_ellipse_diameters_and_orientation(angle):
    mask = ellipse((200, 200), (100, 100), 60, 25, angle)
    measured = measure_lesion(mask, PLAIN)
    # Pixel-corner outlines measure a digital ellipse to within about a pixel and a half.
    assert measured.long_axis.length_px == pytest.approx(120, abs=2.5)
    assert measured.perpendicular_axis.length_px == pytest.approx(50, abs=2.5)
    assert measured.long_axis.length_mm is None and measured.perpendicular_axis.length_mm is None
    assert measured.long_axis_angle == pytest.approx(angle, abs=3)
    assert measured.orientation == (PARALLEL if angle < 45 else NOT_PARALLEL)
    # The calipers cross near the centre and are perpendicular.
    long = np.subtract(measured.long_axis.end_index, measured.long_axis.start_index)
    short = np.subtract(measured.perpendicular_axis.end_index, measured.perpendicular_axis.start_index)
    assert abs(np.dot(long, short)) / (np.linalg.norm(long) * np.linalg.norm(short)) < 0.02
    middle = np.add(measured.perpendicular_axis.end_index, measured.perpendicular_axis.start_index) / 2
    np.testing.assert_allclose(middle, (100, 100), atol=3)


def test_anisotropic_pixels_measure_in_mm():
    """0.1 mm columns, 0.3 mm rows: an ellipse 12 mm wide and 6 mm deep, drawn on that grid."""
    step = (0.1, 0.3)
    mask = ellipse((60, 200), (100, 30), 6.0, 3.0, 0, step=step)
    geometry = ImageGeometry(step, (5.0, -2.0), (1.0, 0.0, 0.0, 1.0))
    measured = measure_lesion(mask, geometry)
    assert measured.long_axis.length_mm == pytest.approx(12.0, abs=0.35)
    assert measured.perpendicular_axis.length_mm == pytest.approx(6.0, abs=0.45)
    assert measured.orientation == PARALLEL and measured.depth_to_width == pytest.approx(0.5, abs=0.05)
    # Physical ends follow the geometry: the long axis runs along x, through the centre's y.
    start, end = np.array(measured.long_axis.start), np.array(measured.long_axis.end)
    assert np.linalg.norm(end - start) == pytest.approx(measured.long_axis.length_mm)
    assert (start[1] + end[1]) / 2 == pytest.approx(-2.0 + 30 * 0.3, abs=0.3)
    assert start[2] == end[2] == 0.0


def test_taller_than_wide_is_not_parallel():
    mask = np.zeros((80, 80), dtype=bool)
    mask[10:60, 30:50] = True  # 20 wide, 50 deep
    measured = measure_lesion(mask, PLAIN)
    assert measured.orientation == NOT_PARALLEL and measured.depth_to_width == pytest.approx(2.5)


def test_3d_clip_calipers_lie_on_their_frame():
    geometry = ImageGeometry((0.5, 0.5, 2.0), (0.0, 0.0, 10.0), tuple(np.eye(3).ravel()))
    mask = ellipse((50, 50), (25, 25), 10, 5, 0, step=(0.5, 0.5))
    measured = measure_lesion(mask, geometry, frame=3)
    assert measured.long_axis.start[2] == measured.long_axis.end[2] == pytest.approx(10.0 + 3 * 2.0)
    assert measured.long_axis.length_mm == pytest.approx(20.0, abs=0.8)


def test_region_cropped_to_its_box_measures_as_on_the_whole_frame():
    """find_components measures each region inside its bounding box: same calipers, same frame indices."""
    mask = ellipse((300, 400), (260, 120), 50, 20, 35)
    rows, columns = np.nonzero(mask)
    box = (slice(rows.min(), rows.max() + 1), slice(columns.min(), columns.max() + 1))
    geometry = ImageGeometry((0.1, 0.2), (3.0, -1.0), (1.0, 0.0, 0.0, 1.0))
    whole = measure_lesion(mask, geometry)
    cropped = measure_lesion(mask[box], geometry, offset=(box[0].start, box[1].start))
    assert cropped == whole
    # A region touching the frame's edge: outside the frame is background, as outside a crop.
    edge = np.zeros((50, 60), dtype=bool)
    edge[0:20, 40:60] = True
    assert measure_lesion(edge[0:20, 40:60], PLAIN, offset=(0, 40)) == measure_lesion(edge, PLAIN)


def test_empty_mask_is_refused():
    with pytest.raises(ValueError, match="empty"):
        measure_lesion(np.zeros((4, 4), dtype=bool), PLAIN)


def test_components_carry_measurements_and_table_has_their_columns():
    label = np.zeros((1, 60, 90), dtype=np.uint8)
    label[0, 10:20, 10:50] = 1  # 40 x 10, the larger
    label[0, 30:50, 60:70] = 1  # 10 x 20
    geometry = ImageGeometry((0.2, 0.2), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    components = find_components(label[0].astype(bool), label[0].astype(np.float32), geometry, 0)
    assert [c.measurements.orientation for c in components] == [PARALLEL, NOT_PARALLEL]
    result = PredictionResult(
        probability=label.astype(np.float32), class_probabilities=np.array([[0.3, 0.7]], dtype=np.float32),
        class_names=["benign", "malignant"], geometry=geometry, threshold=0.5, source="s",
    )
    (row,) = frame_rows(result, "s")
    assert set(MEASUREMENT_COLUMNS) <= set(result_columns(["benign", "malignant"]))
    assert row["long_axis_px"] == pytest.approx(math.hypot(40, 10), abs=0.01)
    assert row["long_axis_mm"] == pytest.approx(0.2 * math.hypot(40, 10), abs=0.01)
    # A cut perpendicular to the diagonal crosses the 10-pixel height at a slant: 10 * hypot / 40 pixels.
    assert row["perpendicular_axis_mm"] == pytest.approx(0.2 * 10 * math.hypot(40, 10) / 40, abs=0.1)
    assert row["orientation"] == PARALLEL
    document = result.to_json()
    saved = document["frames"][0]["components"][0]["measurements"]
    assert saved["long_axis"]["length_mm"] == pytest.approx(row["long_axis_mm"], abs=1e-3)
    assert saved["orientation"] == PARALLEL
