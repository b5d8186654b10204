"""The results document of ``mffmt predict``: ``results.json`` (the run) and ``results.csv`` (its rows).

This module is their one owner: ``mffmt predict`` and the ``mffmt serve`` worker write them with
:func:`write_results`, and every reader (a rerun of predict, the Slicer module's import) reads them
with :func:`read_results_document` and :func:`typed_row`. It needs no torch.

``results.json`` is strict JSON (no NaN or infinity, on writing and on reading) holding:

- ``software``, ``model`` (path, checksum, name, ...), ``settings`` (``threshold``, ``roi``, ..., and
  with ``--adapt-norm`` ``norm_adaptation``: its settings, ``applied``, ``frames``, ``inputs`` and, when
  applied, ``statistics_sha256``; see :meth:`MFFMTCore.inference.predictor.Predictor.adapted`);
- ``columns``: the row columns, in order (:func:`result_columns`);
- ``inputs``: per input ``input``, ``stem``, ``status`` (``done``, ``skipped``, ``failed``), ``error``,
  ``outputs`` (name -> file: ``segmentation``, ``probability``, ``overlay``, ``gradcam``, ...), its
  settings and content hash, and for clips the clip-level result;
- ``rows``: one row per frame of every input, the rows of ``results.csv``.

One tuple, :data:`RESULT_COLUMNS`, lists every column in order with its type. A new column is one
more entry here. The entry ``p_{class}`` stands for one probability column per class of the model
(``p_benign, p_malignant``).

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

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from MFFMTCore.base.jsonsafe import loads_strict
from MFFMTCore.base.labels import CLASS_NAMES
from MFFMTCore.base.measurements import LesionMeasurements
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import json_text, write_text_atomic
from MFFMTCore.version import __version__

#: The files of a results folder.
JSON_NAME = "results.json"
CSV_NAME = "results.csv"
#: Input statuses whose outputs are on disk.
FINISHED = ("done", "skipped")

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


def error_row(input_name: str, error: str) -> dict[str, Any]:
    """The row of an input that could not be processed."""
    return {"input": input_name, "frame": None, "error": error}


def results_document(model: dict[str, Any], settings: dict[str, Any], columns: list[str],
                     inputs: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The results document of a run (see the module's docstring for its parts)."""
    return {"software": {"MFFMTCore": __version__}, "model": model, "settings": settings, "columns": columns,
            "inputs": inputs, "rows": rows}


def write_results(directory: str | os.PathLike, document: dict[str, Any]) -> None:
    """Write ``document`` to results.json and its ``rows`` (in its ``columns``) to results.csv, each
    atomically; results.json first, so that a results.csv always has its document.

    Raises:
        ValueError: a value that strict JSON cannot hold (NaN, infinity).
        OSError: the files cannot be written.
    """
    directory = Path(directory)
    columns = document["columns"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in document["rows"]:
        writer.writerow({key: "" if row.get(key) is None else row[key] for key in columns})
    # One line: the C encoder is about 10x faster than the indenting one, and it is rewritten often.
    write_text_atomic(directory / JSON_NAME, json_text(document, indent=None))
    write_text_atomic(directory / CSV_NAME, buffer.getvalue())


def read_results_document(directory: str | os.PathLike, required: bool = False) -> dict[str, Any] | None:
    """The results document in ``directory``, checked: a dict whose ``inputs`` and ``rows`` are lists of
    objects, ``columns`` a list of names and ``settings`` an object.

    Args:
        directory: the results folder.
        required: raise when there is no results.json (else return None).

    Raises:
        MFFMTError: the file is missing (with ``required``), cannot be read, is not strict JSON or is
            not a results document.
    """
    path = Path(directory) / JSON_NAME
    if not path.is_file():
        if required:
            raise MFFMTError(path, "not found (did mffmt predict finish?)")
        return None
    try:
        document = loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise MFFMTError(path, f"cannot be read ({error}); remove it or use --overwrite") from error
    lists = ("inputs", "rows")
    if (not isinstance(document, dict)
            or not all(isinstance(document.get(key, []), list) for key in lists) or "inputs" not in document
            or not all(isinstance(item, dict) for key in lists for item in document.get(key, []))
            or not isinstance(document.get("settings", {}), dict)
            or not all(isinstance(name, str) for name in document.get("columns", []))):
        raise MFFMTError(path, "is not an `mffmt predict` results file; remove it or use --overwrite")
    return document


def document_threshold(document: dict[str, Any]) -> float:
    """The lesion threshold the document's run used.

    Raises:
        MFFMTError: it records none, or one outside the rule of :mod:`MFFMTCore.base.thresholds`.
    """
    return check_threshold((document.get("settings") or {}).get("threshold"), f"{JSON_NAME} threshold")


def finished_outputs(document: dict[str, Any]) -> dict[str, dict[str, Path]]:
    """Input -> {output name: file} of the inputs whose outputs are on disk (done or skipped)."""
    return {str(entry.get("input")): {name: Path(file) for name, file in (entry.get("outputs") or {}).items()}
            for entry in document["inputs"] if entry.get("status") in FINISHED}


def _typed(kind: type, value: Any) -> Any:
    if kind is str:
        return "" if value is None else str(value)
    if kind is bool:  # JSON gives true/false, the CSV "True"/"False"
        return value if isinstance(value, bool) else str(value).strip().lower() in ("true", "1")
    if value is None or (isinstance(value, str) and not value.strip()):
        return -1 if kind is int else math.nan
    try:
        return int(float(value)) if kind is int else float(value)
    except (TypeError, ValueError, OverflowError):
        return -1 if kind is int else math.nan


def typed_row(raw: dict[str, Any], types: dict[str, type] | None = None) -> dict[str, Any]:
    """A result row with every column present and typed: missing numbers are NaN, a missing frame -1,
    missing text ""; keys that are not columns are kept as they are.

    Args:
        raw: a row as results.json or results.csv holds it.
        types: column -> type (default: :func:`column_types` of the default class names).
    """
    types = column_types() if types is None else types
    row = {name: _typed(kind, raw.get(name)) for name, kind in types.items()}
    row.update({key: value for key, value in raw.items() if key not in types})
    return row


def document_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The document's rows, typed by its columns (:func:`typed_row`)."""
    fixed = column_types(())
    columns = document.get("columns") or list(column_types())
    types = {name: fixed.get(name, float) for name in columns}  # the others are p_<class> probabilities
    return [typed_row(row, types) for row in document["rows"]]
