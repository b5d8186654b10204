"""Small command-line refusals (issue 21 item 12): an empty ``--output=`` and an absurd ``--threads``
are refused in one line before anything runs or is written."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from MFFMTCore.base.devices import THREADS_PER_CORE, available_cores
from MFFMTCore.cli import build_parser, main
from MFFMTCore.resources import sample_datalist


def refusal(argv: list[str], capsys) -> str:
    """The last stderr line of parsing ``argv``, which must stop with status 2."""
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args(argv)
    assert stop.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


@pytest.mark.parametrize("argv", [
    ["predict", "x.png"], ["evaluate", "--data", "d.csv"], ["export", "--model", "m"], ["fit-input-check", "m"],
])
@pytest.mark.parametrize("empty", ["--output=", "--output= "])
def test_an_empty_output_is_refused(argv, empty, capsys):
    assert "--output: expected a file or folder name, got" in refusal(argv + [empty], capsys)


def test_predict_with_an_empty_output_writes_nothing_in_the_current_folder(sample_frames, model_path, tmp_path):
    done = subprocess.run([sys.executable, "-m", "MFFMTCore", "predict", str(sample_frames[0]), "--output=",
                           "--model", str(model_path), "--progress", "none"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.environ.get("PYTHONPATH", "")})
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--output: expected a file or folder name, got ''" in done.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("argv", [
    ["predict", "x.png", "--output", "o"], ["evaluate", "--data", "d.csv", "--output", "o"], ["serve"],
    ["live", "--igtl", "localhost:18944"],
])
def test_absurd_threads_are_refused_in_one_line(argv, capsys):
    limit = THREADS_PER_CORE * available_cores()
    line = refusal(argv + ["--threads", "100000"], capsys)
    assert line.endswith(f"--threads: must be at most {limit} ({THREADS_PER_CORE} x the {available_cores()} cores "
                         "this process may use), got 100000")
    assert build_parser().parse_args(argv + ["--threads", str(limit)]).threads == limit


def test_train_refuses_absurd_threads_before_it_starts(tmp_path, capsys):
    assert main(["train", "--data", str(sample_datalist()), "--output", str(tmp_path / "run"), "--epochs", "1",
                 "--threads", "100000", "--progress", "none"]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("mffmt train: error: --threads: must be at most") and line.endswith("got 100000")
    assert not (tmp_path / "run").exists()
