"""The ``mffmt`` command line as a whole: what becomes a one-line error, and what keeps its traceback."""

from __future__ import annotations

import pytest

import MFFMTCore.commands.export as export_command
from MFFMTCore.cli import main
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
