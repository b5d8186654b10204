"""One threshold rule (MFFMTCore.base.thresholds): the CLI, the worker, the model file, the results
reader and the Slicer module refuse the same values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from MFFMTSlicerLib import commands

from MFFMTCore.base.results_schema import document_threshold, read_results_document
from MFFMTCore.base.thresholds import SLIDER_RANGE, THRESHOLD_STEP, check_threshold
from MFFMTCore.cli import build_parser
from MFFMTCore.errors import MFFMTError
from MFFMTCore.serving.client import RequestError, WorkerClient

BAD = [0, 0.0, 1, 1.0, -0.1, 1.5, math.nan, math.inf, True, "0.5", None]


@pytest.mark.parametrize("value", BAD)
def test_the_rule_refuses_zero_one_and_what_is_no_probability(value):
    with pytest.raises(MFFMTError, match=r"^lesion threshold: must be a probability strictly between 0 and 1"):
        check_threshold(value)


def test_the_rule_keeps_what_lies_between_and_the_slider_lies_inside_it():
    assert check_threshold(0.5) == 0.5 and check_threshold(1e-6) == 1e-6
    low, high = SLIDER_RANGE
    assert (low, high) == (0.01, 0.99) and THRESHOLD_STEP == 0.01
    assert check_threshold(low) == low and check_threshold(high) == high


@pytest.mark.parametrize("command", [
    ["predict", "x.png", "--output", "out", "--lesion-threshold"],
    ["predict", "x.png", "--output", "out", "--threshold"],
    ["evaluate", "--data", "d.csv", "--model", "m", "--output", "out", "--malignancy-threshold"],
])
@pytest.mark.parametrize("value", ["1", "1.0", "0", "nan", "abc"])
def test_the_command_line_refuses_a_threshold_of_one_or_zero(command, value, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(command + [value])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "strictly between 0 and 1" in error and value in error


def test_the_command_line_keeps_a_threshold_between():
    args = build_parser().parse_args(["predict", "x.png", "--output", "out", "--lesion-threshold", "0.99"])
    assert args.lesion_threshold == 0.99


@pytest.fixture(scope="module")
def worker(model_path):
    with WorkerClient(model=model_path, threads=1) as client:
        yield client


@pytest.mark.parametrize("value", [1.0, 1.5, 0])
def test_the_worker_refuses_a_bad_threshold_once_and_writes_nothing(worker, sample_frames, tmp_path, value):
    output = tmp_path / "out"
    events = []
    with pytest.raises(RequestError) as refused:
        worker.predict(sample_frames[:2], output, threshold=value, progress=events.append)
    assert str(refused.value).startswith("'threshold': must be a probability strictly between 0 and 1")
    assert "\n" not in str(refused.value) and not events
    assert not (output / "results.json").exists() and not (output / "results.csv").exists()
    with pytest.raises(RequestError, match="'threshold': must be"):
        worker.segment(np.zeros((40, 40), np.uint8), threshold=value)
    # The next request is served.
    assert worker.predict(sample_frames[:1], output, threshold=0.4).message["done"] == 1


def test_the_slicer_request_and_the_results_reader_use_the_rule(tmp_path):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        commands.predict_request(["x.png"], "out", lesion_threshold=1.0)
    assert commands.predict_request(["x.png"], "out", lesion_threshold=0.99)["threshold"] == 0.99
    document = {"format": "mffmt-results", "settings": {"threshold": 1.0}, "inputs": [], "rows": []}
    (tmp_path / "results.json").write_text(json.dumps(document))
    with pytest.raises(MFFMTError, match="results.json threshold: must be a probability strictly between 0 and 1"):
        document_threshold(read_results_document(tmp_path, required=True))


def test_a_model_file_with_threshold_one_is_refused(random_model, tmp_path):
    with pytest.raises(ValueError, match="threshold .*strictly between 0 and 1"):
        random_model(tmp_path / "one.safetensors", threshold=1.0)
    assert random_model(tmp_path / "high.safetensors", threshold=0.99).is_file()


def test_evaluate_called_from_python_refuses_a_malignancy_threshold_of_one(model_path, tmp_path):
    from MFFMTCore.evaluation.evaluate import evaluate

    with pytest.raises(MFFMTError, match="^malignancy threshold: must be a probability strictly between 0 and 1"):
        evaluate(model_path, [], tmp_path / "eval", malignancy_threshold=1.0)
    assert not (tmp_path / "eval").exists()
