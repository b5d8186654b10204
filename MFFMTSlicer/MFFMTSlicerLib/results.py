"""``mffmt predict`` results as Slicer shows them: table columns, labels, measurements at another threshold.

The results document (results.json: rows, columns, output files, settings) is read by
:mod:`MFFMTCore.base.results_schema`, its one owner; rows are typed by its :func:`typed_row`
(centroids in physical LPS, as SimpleITK gives them). Slicer shows them in a table node and as a
labelled point at each lesion's centroid.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import numpy as np

from MFFMTCore.base.components import LesionSummary, find_components
from MFFMTCore.base.geometry import ImageGeometry, lps_to_ras
from MFFMTCore.base.labels import UNSUITABLE
from MFFMTCore.base.measurements import LesionMeasurements
from MFFMTCore.base.results_schema import (
    MEASUREMENT_COLUMNS,
    column_types,
    measurement_cells,
    typed_row,
)

FIELD_TYPES: dict[str, type] = column_types()


def lesion_free_frames(rows: list[dict[str, Any]]) -> set[int]:
    """The frames the model's lesion rule found lesion-free (their label map stays empty at any threshold)."""
    return {row["frame"] for row in map(typed_row, rows) if not row["error"] and not row["lesion_present"]}


def has_lesion(row: dict[str, Any]) -> bool:
    """True when the frame was processed and a lesion was found in it."""
    area = row.get("lesion_area_px", math.nan)
    return not row.get("error") and math.isfinite(area) and area > 0


def centroid_ras(row: dict[str, Any]) -> tuple[float, float, float] | None:
    """The lesion centroid in Slicer's RAS, or None when the frame has no lesion."""
    point = (row.get("centroid_x", math.nan), row.get("centroid_y", math.nan), row.get("centroid_z", math.nan))
    if not has_lesion(row) or not all(math.isfinite(value) for value in point):
        return None
    return lps_to_ras(point)


def lesion_label(row: dict[str, Any], with_frame: bool = False) -> str:
    """The text shown at the lesion, e.g. "Malignant 0.87" (the predicted class and its probability)."""
    if row.get("error"):
        return f"Error: {row['error']}"
    prediction = str(row.get("prediction", "")).strip().lower()
    text = prediction.capitalize() or "Unknown"
    if prediction == UNSUITABLE.lower():  # no class is presented for a frame unlike breast B-mode
        text = UNSUITABLE[0].upper() + UNSUITABLE[1:]
    else:
        probability = row.get("p_malignant") if prediction == "malignant" else row.get("p_benign")
        if probability is not None and math.isfinite(probability):
            text += f" {probability:.2f}"
    return f"Frame {row.get('frame', 0)}: {text}" if with_frame else text


@dataclass
class TableColumn:
    """One column of the results table: title, kind ("string", "int" or "double") and values."""

    title: str
    kind: str
    values: list[Any]


# (title, kind, function of a row)
_TABLE_LAYOUT = (
    ("Frame", "int", lambda row: row["frame"]),
    ("P(benign)", "double", lambda row: row["p_benign"]),
    ("P(malignant)", "double", lambda row: row["p_malignant"]),
    ("Prediction", "string", lambda row: row["prediction"]),
    ("Lesion present", "string", lambda row: "" if row["error"] else ("yes" if row["lesion_present"] else "no")),
    ("P(lesion)", "double", lambda row: row["p_lesion"]),
    ("Lesion area (mm2)", "double", lambda row: row["lesion_area_mm2"]),
    ("Lesion area (px)", "double", lambda row: row["lesion_area_px"]),
    ("Components", "double", lambda row: row["components"]),
    ("Long axis (mm)", "double", lambda row: row["long_axis_mm"]),
    ("Perpendicular axis (mm)", "double", lambda row: row["perpendicular_axis_mm"]),
    ("Long axis (px)", "double", lambda row: row["long_axis_px"]),
    ("Perpendicular axis (px)", "double", lambda row: row["perpendicular_axis_px"]),
    ("Orientation", "string", lambda row: row["orientation"]),
    ("Input check", "string", lambda row: row["input_reason"] if row["input_flagged"] else ""),
    ("Centroid R", "double", lambda row: (centroid_ras(row) or (math.nan,) * 3)[0]),
    ("Centroid A", "double", lambda row: (centroid_ras(row) or (math.nan,) * 3)[1]),
    ("Centroid S", "double", lambda row: (centroid_ras(row) or (math.nan,) * 3)[2]),
    ("Input", "string", lambda row: row["input"]),
    ("Error", "string", lambda row: row["error"]),
)


def results_table(rows: list[dict[str, Any]]) -> list[TableColumn]:
    """The results as table columns (centroids in RAS), in the order Slicer's table shows them."""
    rows = [typed_row(row) for row in rows]
    return [TableColumn(title, kind, [value(row) for row in rows]) for title, kind, value in _TABLE_LAYOUT]


def frame_measurements(probability: np.ndarray, threshold: float, ijk_to_ras: np.ndarray,
                       spacing_known: bool = True, lesion_free: Collection[int] = (),
                       first_frame: int = 0) -> list[dict[str, Any]]:
    """Lesion area, component count and centroid of each frame after thresholding a probability map.

    Lets the Slicer module follow the threshold slider without running the network again, with the
    lesion measurement of ``mffmt predict`` (:func:`MFFMTCore.base.components.find_components` and
    :class:`~MFFMTCore.base.components.LesionSummary`); a pixel is lesion when its probability is at
    least ``threshold``.

    Args:
        probability: (k, j, i) lesion probabilities of all frames.
        threshold: lesion probability threshold.
        ijk_to_ras: the probability volume's IJK-to-RAS matrix.
        spacing_known: whether the input records a pixel spacing (else ``lesion_area_mm2`` is NaN).
        lesion_free: frames the model's lesion rule found lesion-free (see :func:`lesion_free_frames`):
            no lesion at any threshold, as in ``mffmt predict``.
        first_frame: the frame index of ``probability[0]`` in the volume (to measure some frames only).

    Returns:
        Per frame: ``lesion_area_px``, ``lesion_area_mm2``, ``components``, ``centroid_x/y/z`` (LPS,
        like the results files; NaN without lesion), the largest region's diameters and orientation,
        and ``calipers``: its two diameters as :func:`caliper_line` dicts (empty without lesion).
    """
    probability = np.asarray(probability)
    if probability.ndim != 3:
        raise ValueError(f"probability map must be (k, j, i), got shape {probability.shape}")
    geometry = ImageGeometry.from_ijk_to_ras(ijk_to_ras, spacing_known)
    measurements = []
    for k, frame in enumerate(probability, start=first_frame):
        found = find_components(frame >= threshold, frame, geometry, k) if k not in lesion_free else []
        lesion = LesionSummary.of(found, spacing_known)
        centroid = lesion.centroid or (math.nan,) * 3
        measured = found[0].measurements if found else None
        measurements.append({"lesion_area_px": float(lesion.area_px),
                             "lesion_area_mm2": math.nan if lesion.area_mm2 is None else lesion.area_mm2,
                             "components": float(lesion.count), "centroid_x": centroid[0],
                             "centroid_y": centroid[1], "centroid_z": centroid[2], **_diameters(measured)})
    return measurements


def _diameters(measured: LesionMeasurements | None) -> dict[str, Any]:
    """Result-row cells of a region's diameters and orientation (typed: NaN and "" without a region),
    and its two ``calipers`` to draw."""
    cells = typed_row(measurement_cells(measured), {key: FIELD_TYPES[key] for key in MEASUREMENT_COLUMNS})
    calipers = [] if measured is None else [
        caliper_line(name, caliper)
        for name, caliper in (("long axis", measured.long_axis), ("perpendicular axis", measured.perpendicular_axis))]
    return {**cells, "calipers": calipers}


def caliper_line(name: str, caliper: Any) -> dict[str, Any]:
    """A caliper as Slicer draws it: end points in RAS and a label with its length (mm, else px)."""
    length = (f"{caliper.length_mm:.1f} mm" if caliper.length_mm is not None else f"{caliper.length_px:.0f} px")
    return {"name": name, "start": lps_to_ras(caliper.start), "end": lps_to_ras(caliper.end),
            "label": f"{name} {length}"}


def key_frame(rows: list[dict[str, Any]]) -> int | None:
    """The frame to draw calipers on: the one with the largest lesion (None when no frame has one)."""
    found = [row for row in map(typed_row, rows) if has_lesion(row)]
    return max(found, key=lambda row: row["lesion_area_px"])["frame"] if found else None


def apply_measurements(rows: list[dict[str, Any]], measurements: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with the lesion measurements of their frame replaced (rows with an error are kept as they are)."""
    updated = []
    for row in rows:
        row = typed_row(row)
        frame = row["frame"]
        if not row["error"] and 0 <= frame < len(measurements):
            row.update({key: value for key, value in measurements[frame].items() if key != "calipers"})
        updated.append(row)
    return updated
