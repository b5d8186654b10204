"""``results.csv`` and ``results.json``: one row per frame of every input, and the run's context.

The columns are those of :data:`MFFMTCore.base.results_schema.RESULT_COLUMNS`. ``results.json``
holds the same rows plus the model, the settings, and per input its status, output files and, for
clips, the clip-level result.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path
from typing import Any

from MFFMTCore.base.results_schema import INPUT_CHECK_COLUMNS, measurement_cells
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import json_text, write_text_atomic
from MFFMTCore.inference.result import FrameResult, PredictionResult

CSV_NAME = "results.csv"
JSON_NAME = "results.json"


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


def error_row(input_name: str, error: str) -> dict[str, Any]:
    """The row of an input that could not be processed."""
    return {"input": input_name, "frame": None, "error": error}


def write_results(directory: str | os.PathLike, document: dict[str, Any], columns: list[str]) -> None:
    """Write ``document`` to results.json and its ``rows`` to results.csv, each atomically."""
    directory = Path(directory)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in document["rows"]:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    # One line: the C encoder is about 10x faster than the indenting one, and it is rewritten often.
    write_text_atomic(directory / JSON_NAME, json_text(document, indent=None))
    write_text_atomic(directory / CSV_NAME, buffer.getvalue())


def read_results_document(directory: str | os.PathLike) -> dict[str, Any] | None:
    """The results.json of an earlier run in ``directory``, or None when there is none.

    Raises:
        MFFMTError: the file exists but is not a results document (damaged or foreign).
    """
    path = Path(directory) / JSON_NAME
    if not path.is_file():
        return None
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise MFFMTError(path, f"cannot be read ({error}); remove it or use --overwrite") from error
    if not isinstance(document, dict) or not isinstance(document.get("inputs"), list):
        raise MFFMTError(path, "is not an `mffmt predict` results file; remove it or use --overwrite")
    return document
