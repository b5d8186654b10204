"""Command lines for ``mffmt predict`` and ``mffmt train``, and the environment to run them in.

The Slicer module never runs the network in its own process: it starts
``<Slicer's python> -m MFFMTCore predict|train ...`` (the contract in the project docs) and reads
its progress, so the GUI stays responsive and Cancel can stop the work.

Every path is made absolute (the child runs in a temporary working folder, not the caller's) and
input paths come after ``--``, so names that start with ``-`` are never taken for options.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from MFFMTCore.base.progress_events import PROGRESS_CHOICES

# Device choices shown to the user -> the --device values of the command line.
DEVICES = {"CPU": "cpu", "GPU": "cuda"}
BACKBONES = ("resnet18", "resnet50")


def device_argument(choice: str) -> str:
    """``"CPU"``/``"GPU"`` (or ``"cpu"``/``"cuda"``) -> the ``--device`` value."""
    if choice in DEVICES:
        return DEVICES[choice]
    if choice in DEVICES.values():
        return choice
    raise ValueError(f"unknown device {choice!r}: choose one of {', '.join(DEVICES)}")


def roi_argument(box: Sequence[int]) -> str:
    """(x, y, w, h) pixels -> the ``--roi X,Y,W,H`` value."""
    if len(box) != 4 or any(int(v) != v for v in box) or box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
        raise ValueError(f"ROI must be 4 whole numbers x, y >= 0 and w, h >= 1, got {list(box)}")
    return ",".join(str(int(v)) for v in box)


def predict_command(
    python: str | os.PathLike,
    inputs: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    model: str | os.PathLike | None = None,
    lesion_threshold: float | None = None,
    roi: Sequence[int] | None = None,
    gradcam: bool = False,
    device: str = "cpu",
    batch_size: int | None = None,
    overwrite: bool = True,
    progress: str = "json",
) -> list[str]:
    """The argument list of ``python -m MFFMTCore predict``.

    Args:
        python: the Python executable (Slicer's ``PythonSlicer``).
        inputs: image files to segment and classify.
        output_dir: folder for the results (``--output``).
        model: model file; None uses the installed default model.
        lesion_threshold: lesion probability threshold in (0, 1) (``--lesion-threshold``); None uses the
            model's own.
        roi: (x, y, w, h) pixel box that restricts each frame (the paper's ROI mode).
        gradcam: also write Grad-CAM heat maps.
        device: ``"cpu"``/``"cuda"`` or ``"CPU"``/``"GPU"``.
        batch_size: frames per forward pass; None uses the command's default.
        overwrite: replace results already in ``output_dir``.
        progress: ``"json"`` (one progress event per line on stdout, see
            :mod:`MFFMTCore.base.progress_events`), ``"bar"`` or ``"none"``.
    """
    inputs = [_absolute(path) for path in inputs]
    if not inputs:
        raise ValueError("nothing to segment: no input files")
    if lesion_threshold is not None and not 0.0 < lesion_threshold < 1.0:
        raise ValueError(f"lesion threshold must be between 0 and 1, got {lesion_threshold}")
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")
    if progress not in PROGRESS_CHOICES:
        raise ValueError(f"progress must be one of {', '.join(PROGRESS_CHOICES)}, got {progress!r}")
    args = [str(python), "-m", "MFFMTCore", "predict", "--output", _absolute(output_dir),
            "--device", device_argument(device), "--progress", progress]
    if model is not None:
        args += ["--model", _absolute(model)]
    if lesion_threshold is not None:
        args += ["--lesion-threshold", repr(float(lesion_threshold))]
    if roi is not None:
        args += ["--roi", roi_argument(roi)]
    if gradcam:
        args.append("--gradcam")
    if batch_size is not None:
        args += ["--batch-size", str(int(batch_size))]
    if overwrite:
        args.append("--overwrite")
    return [*args, "--", *inputs]


def train_command(
    python: str | os.PathLike,
    data: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    backbone: str | None = None,
    epochs: int | None = None,
    learning_rate: float | None = None,
    lambda_loc: float | None = None,
    batch_size: int | None = None,
    val_fraction: float | None = None,
    input_size: int | None = None,
    init_model: str | os.PathLike | None = None,
    device: str = "cpu",
    stop_file: str | os.PathLike | None = None,
    seed: int | None = None,
    progress: str | None = None,
) -> list[str]:
    """The argument list of ``python -m MFFMTCore train``; None leaves an option to the command's preset.

    Args:
        python: the Python executable (Slicer's ``PythonSlicer``).
        data: dataset folders (BUSI or BUS-BRA layout) and datalist files (``--data``, repeated).
        output_dir: the run folder (``--output``): model, checkpoint, progress.jsonl, curves.
        backbone: ``"resnet18"`` (MFFMT18) or ``"resnet50"`` (MFFMT50).
        epochs: number of epochs.
        learning_rate: Adam learning rate (``--lr``).
        lambda_loc: weight of the lesion-perception loss (the paper's lambda, ``--lambda-loc``).
        batch_size: images per step.
        val_fraction: share of the data held out for validation, in (0, 1).
        input_size: side of the square network input, a multiple of 32.
        init_model: model file to fine-tune; None trains from scratch.
        device: ``"cpu"``/``"cuda"`` or ``"CPU"``/``"GPU"``.
        stop_file: a file whose appearance stops training at the next safe point.
        seed: random seed.
        progress: ``"bar"`` or ``"none"`` (``--progress``); a program reading RUN_DIR/progress.jsonl
            passes ``"none"``. None leaves the command's default (a bar).
    """
    data = [_absolute(path) for path in data]
    if not data:
        raise ValueError("no training data: give a dataset folder, a datalist or scene volumes")
    if backbone is not None and backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {', '.join(BACKBONES)}, got {backbone!r}")
    _check_positive_int("epochs", epochs)
    _check_positive_int("batch size", batch_size)
    if learning_rate is not None and not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"learning rate must be positive, got {learning_rate}")
    if lambda_loc is not None and not (math.isfinite(lambda_loc) and lambda_loc >= 0):
        raise ValueError(f"lambda must be zero or positive, got {lambda_loc}")
    if val_fraction is not None and not 0.0 < val_fraction < 1.0:
        raise ValueError(f"validation fraction must be between 0 and 1, got {val_fraction}")
    if input_size is not None and (input_size < 32 or input_size % 32):
        raise ValueError(f"input size must be a multiple of 32, got {input_size}")
    args = [str(python), "-m", "MFFMTCore", "train"]
    for path in data:
        args.append(f"--data={path}")
    args += ["--output", _absolute(output_dir), "--device", device_argument(device)]
    options = [("--backbone", backbone), ("--epochs", epochs), ("--lr", learning_rate), ("--lambda-loc", lambda_loc),
               ("--batch-size", batch_size), ("--val-fraction", val_fraction), ("--input-size", input_size),
               ("--init-model", init_model and _absolute(init_model)), ("--stop-file", stop_file and _absolute(stop_file)),
               ("--seed", seed)]
    for flag, value in options:
        if value is not None:
            args += [flag, repr(value) if isinstance(value, float) else str(value)]
    if progress is not None:
        args += ["--progress", progress]
    return args


def _absolute(path: str | os.PathLike) -> str:
    """``path`` made absolute against this process's working folder (the child runs elsewhere)."""
    return os.path.abspath(os.fspath(path))


def _check_positive_int(name: str, value: int | None) -> None:
    if value is not None and (int(value) != value or value < 1):
        raise ValueError(f"{name} must be a whole number of at least 1, got {value}")


def locate_core_package(candidates: Iterable[str | os.PathLike]) -> Path | None:
    """The first folder among ``candidates`` that holds the ``MFFMTCore`` package, or None.

    Installed, the extension puts ``MFFMTCore`` next to the module file; in a source checkout it is
    one folder up from the module folder.
    """
    for folder in candidates:
        folder = Path(folder)
        if (folder / "MFFMTCore" / "__init__.py").is_file() or (folder / "MFFMTCore" / "__init__.pyc").is_file():
            return folder.resolve()
    return None


def child_environment(base: Mapping[str, str], core_parent: str | os.PathLike | None) -> dict[str, str]:
    """Environment for the ``mffmt`` process: ``base`` plus the folder of ``MFFMTCore`` on PYTHONPATH.

    Output is unbuffered and UTF-8 so that progress lines arrive as they are written, whatever the
    system's locale.
    """
    env = dict(base)
    if core_parent is not None:
        paths = [str(core_parent)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    return env
