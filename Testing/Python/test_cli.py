"""The ``mffmt`` command line as a whole: what becomes a one-line error, and what keeps its traceback."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

import MFFMTCore.commands.export as export_command
from MFFMTCore.base.progress_events import PROGRESS_CHOICES, event_line, make_event, parse_event_line
from MFFMTCore.cli import build_parser, main
from MFFMTCore.errors import MFFMTError


def test_a_bug_inside_a_command_keeps_its_traceback(monkeypatch, tmp_path):
    def broken_export(*args, **kwargs):
        raise ValueError("operands could not be broadcast together with shapes (3,) (4,)")

    monkeypatch.setattr(export_command, "export_model", broken_export)
    # Not turned into "mffmt export: error: ..." and exit status 2: it propagates, so Python prints
    # the whole traceback (exit status 1).
    with pytest.raises(ValueError, match="broadcast") as caught:
        main(["export", "--output", str(tmp_path / "model.onnx")])
    assert not isinstance(caught.value, MFFMTError)
    assert caught.traceback[-1].name == "broken_export"


def test_a_user_error_is_one_line_naming_the_option(capsys, tmp_path):
    assert main(["export", "--output", str(tmp_path / "model.onnx"), "--input-size", "70"]) == 2
    error = capsys.readouterr().err
    assert error == "mffmt export: error: --input-size: (70, 70) must be a positive multiple of 32\n"


def test_a_user_error_raised_deep_inside_stays_one_line(monkeypatch, capsys, tmp_path):
    def refuse(*args, **kwargs):
        raise MFFMTError(tmp_path / "model.onnx", "cannot be written:\n  the disk\n  is full")

    monkeypatch.setattr(export_command, "export_model", refuse)
    assert main(["export", "--output", str(tmp_path / "model.onnx")]) == 2
    error = capsys.readouterr().err
    assert error == f"mffmt export: error: {tmp_path / 'model.onnx'}: cannot be written: the disk is full\n"
    assert "Traceback" not in error


def test_user_error_classes_share_the_one_base():
    from MFFMTCore.data.records import DatasetError
    from MFFMTCore.files import ImageReadError
    from MFFMTCore.folder_lock import FolderLockedError
    from MFFMTCore.model_file import ModelFileError
    from MFFMTCore.serving.protocol import ProtocolError

    for error_class in (DatasetError, FolderLockedError, ImageReadError, ModelFileError, ProtocolError):
        assert issubclass(error_class, MFFMTError)
    # Each is told apart by its class only: none repeats MFFMTError's constructor.
    for error_class in (DatasetError, FolderLockedError, ImageReadError, ModelFileError):
        assert "__init__" not in vars(error_class), error_class
    assert str(ImageReadError("a.png", "file\nis empty")) == "a.png: file is empty"


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_long_running_command_shares_one_progress_option_and_the_threshold_names():
    commands = _subcommands()
    for name in ("train", "evaluate", "predict", "fit-input-check", "live"):
        option = next(a for a in commands[name]._actions if "--progress" in a.option_strings)
        assert set(option.choices) <= set(PROGRESS_CHOICES) and "none" in option.choices, name
    for name, parser in commands.items():
        shown = parser.format_help()
        # One word, one meaning: the ambiguous spellings are accepted (with a warning) but never offered.
        assert "--threshold " not in shown and "--progress-bar" not in shown, name
    assert "--lesion-threshold" in commands["predict"].format_help()
    assert "--lesion-threshold" in commands["live"].format_help()
    assert "--malignancy-threshold" in commands["evaluate"].format_help()


def test_old_spellings_still_work_with_a_warning(capsys):
    commands = _subcommands()
    parsed = commands["evaluate"].parse_args(["--data", "d", "--output", "o", "--threshold", "0.3",
                                              "--no-progress-bar"])
    assert parsed.malignancy_threshold == 0.3 and parsed.progress == "none"
    assert commands["evaluate"].parse_args(["--data", "d", "--output", "o"]).malignancy_threshold == 0.5
    assert commands["predict"].parse_args(["x.png", "--output", "o", "--threshold", "0.2"]).lesion_threshold == 0.2
    assert commands["train"].parse_args(["--progress-bar"]).progress == "bar"
    warnings = capsys.readouterr().err
    assert "--threshold is deprecated; use --malignancy-threshold" in warnings
    assert "--threshold is deprecated; use --lesion-threshold" in warnings
    assert "--no-progress-bar is deprecated; use --progress none" in warnings


@pytest.mark.parametrize("option, value", [("--lesion-threshold", "0"), ("--lesion-threshold", "1.5"),
                                           ("--batch-size", "0"), ("--threads", "-1")])
def test_bad_values_are_refused_while_parsing(option, value, capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["predict", "x.png", "--output", "o", option, value])
    assert stopped.value.code == 2 and option in capsys.readouterr().err


def test_a_stopping_error_is_also_an_event_under_progress_json(capsys, tmp_path):
    output = tmp_path / "out"
    output.write_text("a file, not a folder")
    assert main(["predict", str(tmp_path / "x.png"), "--output", str(output), "--progress", "json"]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "mffmt predict: error:" in captured.err
    events = [event for event in map(parse_event_line, captured.out.splitlines()) if event]
    assert [event["event"] for event in events] == ["error"] and str(output) in events[0]["message"]


def test_events_are_strict_json_of_known_kinds():
    event = make_event("progress", done=1, total=float("nan"), input="a.png")
    assert event["total"] is None and set(event) == {"event", "done", "total", "input", "time"}
    assert parse_event_line(event_line(event)) == event
    with pytest.raises(KeyError, match="unknown progress event kind"):
        make_event("finished")


def test_mffmt_sets_passive_openmp_waiting_before_torch_is_imported():
    # OpenMP reads OMP_WAIT_POLICY once, when torch loads it: the command line must set it first.
    code = ("import os, sys; os.environ.pop('OMP_WAIT_POLICY', None); import MFFMTCore.cli; "
            "print(os.environ['OMP_WAIT_POLICY'], 'torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.split() == ["PASSIVE", "False"]
