"""The results document (results.json + results.csv) has one torch-free owner,
MFFMTCore.base.results_schema: mffmt predict and the worker write through it, every reader reads through it."""

from __future__ import annotations

import ast
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from MFFMTCore.base.results_schema import (
    CSV_NAME,
    JSON_NAME,
    document_rows,
    document_threshold,
    error_row,
    finished_outputs,
    read_results_document,
    result_columns,
    results_document,
    write_results,
)
from MFFMTCore.cli import main
from MFFMTCore.errors import MFFMTError

REPO = Path(__file__).resolve().parents[2]
ROW = {"input": "/t/a.png", "frame": 0, "p_benign": 0.25, "p_malignant": 0.75, "prediction": "malignant",
       "lesion_present": True, "p_lesion": 0.9, "lesion_area_mm2": None, "lesion_area_px": 40, "components": 1,
       "centroid_x": 1.5, "centroid_y": 2.5, "centroid_z": 0.0, "orientation": "parallel", "error": None}


def document(rows=(ROW,), **settings) -> dict:
    inputs = [{"input": "/t/a.png", "stem": "a", "status": "done", "outputs": {"segmentation": "/o/a.seg.nrrd"}},
              {"input": "/t/b.png", "stem": "b", "status": "failed", "error": "unreadable"},
              {"input": "/t/c.png", "stem": "c", "status": "skipped", "outputs": {"overlay": "/o/c_overlay.png"}}]
    return results_document({"name": "m"}, {"threshold": 0.5, **settings}, result_columns(), inputs,
                            list(rows) + [error_row("/t/b.png", "unreadable")])


def test_written_and_read_back_with_typed_rows_and_the_csv_in_column_order(tmp_path):
    write_results(tmp_path, document())
    read = read_results_document(tmp_path)
    assert read["software"]["MFFMTCore"] and read["columns"] == result_columns()
    rows = document_rows(read)
    assert rows[0]["p_malignant"] == 0.75 and rows[0]["frame"] == 0 and rows[0]["lesion_present"] is True
    assert math.isnan(rows[0]["lesion_area_mm2"]) and rows[0]["error"] == ""
    assert rows[1]["frame"] == -1 and rows[1]["error"] == "unreadable" and math.isnan(rows[1]["p_malignant"])
    with (tmp_path / CSV_NAME).open(newline="") as handle:
        table = list(csv.DictReader(handle))
    assert list(table[0]) == result_columns() and table[0]["lesion_area_mm2"] == "" and table[1]["error"] == "unreadable"
    assert document_threshold(read) == 0.5
    assert finished_outputs(read) == {"/t/a.png": {"segmentation": Path("/o/a.seg.nrrd")},
                                      "/t/c.png": {"overlay": Path("/o/c_overlay.png")}}


def test_strict_json_both_ways(tmp_path):
    with pytest.raises(ValueError):
        write_results(tmp_path, document(rows=[{**ROW, "p_lesion": math.nan}]))
    assert not (tmp_path / JSON_NAME).exists() and not (tmp_path / CSV_NAME).exists()
    text = json.dumps(document()).replace('"p_lesion": 0.9', '"p_lesion": NaN')
    (tmp_path / JSON_NAME).write_text(text)
    with pytest.raises(MFFMTError, match=r"results.json: cannot be read \(NaN is not strict JSON\)"):
        read_results_document(tmp_path)


@pytest.mark.parametrize("text, problem", [
    ('{"oops": 1}', "is not an `mffmt predict` results file"),
    ("[1, 2]", "is not an `mffmt predict` results file"),
    ('{"inputs": [], "rows": [1]}', "is not an `mffmt predict` results file"),
    ('{"inputs": {}, "rows": []}', "is not an `mffmt predict` results file"),
    ('{"inputs": [], "rows": [], "columns": [3]}', "is not an `mffmt predict` results file"),
    ("{", "cannot be read"),
])
def test_what_is_not_a_results_document_is_refused_in_one_line(tmp_path, text, problem):
    (tmp_path / JSON_NAME).write_text(text)
    with pytest.raises(MFFMTError) as refused:
        read_results_document(tmp_path)
    assert str(refused.value).startswith(f"{tmp_path / JSON_NAME}: {problem}") and "\n" not in str(refused.value)
    with pytest.raises(MFFMTError, match=problem):
        read_results_document(tmp_path, required=True)


def test_a_missing_document_is_none_for_a_rerun_and_an_error_for_the_slicer_import(tmp_path):
    assert read_results_document(tmp_path) is None
    with pytest.raises(MFFMTError, match=r"results.json: not found \(did mffmt predict finish\?\)"):
        read_results_document(tmp_path, required=True)


def test_rows_are_typed_by_the_documents_own_columns(tmp_path):
    columns = [name.replace("benign", "normal").replace("malignant", "abnormal") for name in result_columns()]
    row = {"input": "x", "frame": "2", "p_normal": "0.4", "p_abnormal": 0.6}
    write_results(tmp_path, {**document(), "columns": columns, "rows": [row]})
    (typed,) = document_rows(read_results_document(tmp_path))
    assert typed["p_normal"] == 0.4 and typed["p_abnormal"] == 0.6 and typed["frame"] == 2


@pytest.mark.parametrize("threshold", [None, 1.0, 0.0, "0.5"])
def test_a_document_without_a_usable_threshold_is_refused(threshold):
    with pytest.raises(MFFMTError, match="results.json threshold: must be a probability"):
        document_threshold(document(threshold=threshold))


def test_the_document_and_the_slicer_reader_import_no_torch():
    code = ("import sys; import MFFMTCore.base.results_schema, MFFMTSlicerLib.results; "
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith(('MFFMTCore.inference', 'monai'))]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO,
                   env={"PYTHONPATH": f"{REPO}:{REPO / 'MFFMTSlicer'}", "PATH": ""})


def test_only_the_owner_names_the_results_files():
    """No other library module spells "results.json" / "results.csv" in code (docstrings may): one owner."""
    owners = []
    for path in [*REPO.glob("MFFMTCore/**/*.py"), *REPO.glob("MFFMTSlicer/MFFMTSlicerLib/*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                      if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                      and node.body and isinstance(node.body[0], ast.Expr)
                      and isinstance(node.body[0].value, ast.Constant)}
        if any(isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
               and ("results.json" in node.value or "results.csv" in node.value) and "(see" not in node.value
               and " " not in node.value for node in ast.walk(tree)):
            owners.append(path.relative_to(REPO).as_posix())
    assert owners == ["MFFMTCore/base/results_schema.py"]


def test_predict_writes_what_the_owner_reads(sample_frames, model_path, tmp_path):
    assert main(["predict", str(sample_frames[0]), "--output", str(tmp_path), "--model", str(model_path),
                 "--progress", "none"]) == 0
    read = read_results_document(tmp_path)
    (row,) = document_rows(read)
    assert row["input"] == str(sample_frames[0].absolute()) and row["prediction"] in ("benign", "malignant")
    assert set(finished_outputs(read)[row["input"]]) >= {"segmentation", "probability", "overlay"}
    assert document_threshold(read) == 0.5
