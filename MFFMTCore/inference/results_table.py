"""The result rows of a prediction: one row per frame, in the columns of
:data:`MFFMTCore.base.results_schema.RESULT_COLUMNS` (the document that holds them, results.json and
results.csv, is written and read by :mod:`MFFMTCore.base.results_schema`)."""

from __future__ import annotations

from typing import Any

from MFFMTCore.base.results_schema import INPUT_CHECK_COLUMNS, measurement_cells
from MFFMTCore.inference.result import FrameResult, PredictionResult


def _rounded(value: float | None, digits: int = 6) -> float | None:
    return None if value is None else round(float(value), digits)


def frame_rows(result: PredictionResult, input_name: str) -> list[dict[str, Any]]:
    """One row per frame of ``result``."""
    rows = []
    for frame in result.frames:
        centroid = frame.centroid or (None, None, None)
        row: dict[str, Any] = {"input": input_name, "frame": frame.frame}
        row.update({f"p_{name}": _rounded(p) for name, p in frame.probabilities.items()})
        row.update({
            "prediction": frame.prediction,
            "lesion_present": frame.lesion_present,
            "p_lesion": _rounded(frame.p_lesion),
            "lesion_area_mm2": _rounded(frame.lesion_area_mm2, 4),
            "lesion_area_px": frame.lesion_area_px,
            "components": len(frame.components),
            "centroid_x": _rounded(centroid[0], 4),
            "centroid_y": _rounded(centroid[1], 4),
            "centroid_z": _rounded(centroid[2], 4),
            **_measurement_cells(frame),
            **_input_check_cells(frame),
            "error": None,
        })
        rows.append(row)
    return rows


# Decimals kept in the files: hundredths of a pixel, thousandths of a mm.
_MEASUREMENT_DIGITS = {"long_axis_mm": 3, "perpendicular_axis_mm": 3, "long_axis_px": 2, "perpendicular_axis_px": 2}


def _measurement_cells(frame: FrameResult) -> dict[str, Any]:
    """The largest lesion region's diameters and orientation; empty cells without lesion."""
    cells = measurement_cells(frame.measurements)
    return {key: _rounded(value, _MEASUREMENT_DIGITS[key]) if key in _MEASUREMENT_DIGITS else value
            for key, value in cells.items()}


def _input_check_cells(frame: FrameResult) -> dict[str, Any]:
    check = frame.input_check
    if check is None:
        return dict.fromkeys(INPUT_CHECK_COLUMNS)
    return {"input_flagged": check.flagged, "input_score": _rounded(check.score, 4),
            "input_reason": check.reason or None}
