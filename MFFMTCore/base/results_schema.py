"""The columns of ``results.csv`` and the rows of ``results.json`` (one row per frame of every input).

One tuple, :data:`RESULT_COLUMNS`, lists every column in order with its type; ``mffmt predict``
writes them and the Slicer module reads them. A new column is one more entry here. The entry
``p_{class}`` stands for one probability column per class of the model (``p_benign, p_malignant``).

- ``input, frame`` (from 0; empty on the row of an input that failed);
- ``p_<class>``: class probabilities; ``prediction``: the most probable class;
- ``lesion_present``: the model's frame-level lesion decision
  (:class:`~MFFMTCore.base.lesion_decision.LesionDecision`; a frame without a lesion has no
  components); ``p_lesion``: the highest lesion probability of the frame;
- ``lesion_area_mm2`` (empty where the input records no spacing), ``lesion_area_px``;
- ``components``: number of lesion regions;
- ``centroid_x, centroid_y, centroid_z``: physical centre of the largest region, LPS as SimpleITK
  gives it (empty without lesion);
- ``long_axis_mm, perpendicular_axis_mm`` (empty where the spacing is unknown), ``long_axis_px,
  perpendicular_axis_px``, ``orientation`` (``parallel`` / ``not parallel``): the largest region's
  diameters as a breast report gives them (:mod:`MFFMTCore.base.measurements`);
- ``input_flagged, input_score, input_reason``: whether the frame looks unlike breast B-mode
  (:mod:`MFFMTCore.inference.input_check`); a flagged frame's ``prediction`` is ``not breast B-mode``,
  its probabilities are empty and it has no lesion;
- ``error``: why an input failed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from MFFMTCore.base.labels import CLASS_NAMES
from MFFMTCore.base.measurements import LesionMeasurements

#: Placeholder in :data:`RESULT_COLUMNS` for one probability column per class.
CLASS_PROBABILITIES = "p_{class}"

#: The largest lesion region's diameters and orientation.
MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "long_axis_mm", "perpendicular_axis_mm", "long_axis_px", "perpendicular_axis_px", "orientation",
)
#: Whether the frame looks like breast B-mode.
INPUT_CHECK_COLUMNS: tuple[str, ...] = ("input_flagged", "input_score", "input_reason")

#: (column, type) of every result column, in file order.
RESULT_COLUMNS: tuple[tuple[str, type], ...] = (
    ("input", str),
    ("frame", int),
    (CLASS_PROBABILITIES, float),
    ("prediction", str),
    ("lesion_present", bool),
    ("p_lesion", float),
    ("lesion_area_mm2", float),
    ("lesion_area_px", float),
    ("components", float),
    ("centroid_x", float),
    ("centroid_y", float),
    ("centroid_z", float),
    ("long_axis_mm", float),
    ("perpendicular_axis_mm", float),
    ("long_axis_px", float),
    ("perpendicular_axis_px", float),
    ("orientation", str),
    ("input_flagged", bool),
    ("input_score", float),
    ("input_reason", str),
    ("error", str),
)


def measurement_cells(measured: LesionMeasurements | None) -> dict[str, Any]:
    """The :data:`MEASUREMENT_COLUMNS` of a lesion region (None where there is no region, and for mm
    where the spacing is unknown)."""
    if measured is None:
        return dict.fromkeys(MEASUREMENT_COLUMNS)
    return {
        "long_axis_mm": measured.long_axis.length_mm,
        "perpendicular_axis_mm": measured.perpendicular_axis.length_mm,
        "long_axis_px": measured.long_axis.length_px,
        "perpendicular_axis_px": measured.perpendicular_axis.length_px,
        "orientation": measured.orientation,
    }


def column_types(class_names: Sequence[str] = CLASS_NAMES) -> dict[str, type]:
    """Column name -> type, in file order, for a model with these class names."""
    types: dict[str, type] = {}
    for name, kind in RESULT_COLUMNS:
        if name == CLASS_PROBABILITIES:
            types.update({f"p_{class_name}": kind for class_name in class_names})
        else:
            types[name] = kind
    return types


def result_columns(class_names: Sequence[str] = CLASS_NAMES) -> list[str]:
    """The CSV columns, in order, for a model with these class names."""
    return list(column_types(class_names))
