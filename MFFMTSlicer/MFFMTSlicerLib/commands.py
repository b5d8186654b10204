"""What the Slicer module asks of MFFMTCore's processes: ``predict`` requests to the warm ``mffmt serve``
worker, the ``mffmt train`` command line, and the environment to run them in.

The Slicer module never runs the network in its own process: segment & classify goes to one
long-lived ``<Slicer's python> -m MFFMTCore serve`` worker, training to a ``... -m MFFMTCore train``
child whose progress file it reads, so the GUI stays responsive and Cancel can stop the work.

Every path is made absolute (the child runs in a temporary working folder, not the caller's) and
command-line inputs come after ``--``, so names that start with ``-`` are never taken for options.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from MFFMTCore.base.devices import DEVICE_CHOICES, DEVICE_LABELS
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.base.train_options import OPTIONS


def device_argument(choice: str) -> str:
    """A device of the panel's list (``"Automatic"``, ``"CPU"``, ``"GPU"``, ``"Apple GPU"``) or a ``--device``
    value -> the ``--device`` value. Whether the device is present is the worker's to say (Slicer's
    process does not import torch)."""
    if choice in DEVICE_LABELS:
        return DEVICE_LABELS[choice]
    if choice in DEVICE_CHOICES:
        return choice
    raise ValueError(f"unknown device {choice!r}: choose one of {', '.join(DEVICE_LABELS)}")


def roi_argument(box: Sequence[int]) -> str:
    """(x, y, w, h) pixels -> the ``--roi X,Y,W,H`` value."""
    if len(box) != 4 or any(int(v) != v for v in box) or box[0] < 0 or box[1] < 0 or box[2] < 1 or box[3] < 1:
        raise ValueError(f"ROI must be 4 whole numbers x, y >= 0 and w, h >= 1, got {list(box)}")
    return ",".join(str(int(v)) for v in box)


def predict_request(inputs: Iterable[str | os.PathLike], output_dir: str | os.PathLike, *,
                    lesion_threshold: float | None = None, roi: Sequence[int] | None = None,
                    gradcam: bool = False, overwrite: bool = True, dicom: bool = False) -> dict[str, Any]:
    """The fields of a ``predict`` request to the warm ``mffmt serve`` worker (what ``mffmt predict``
    does with the same inputs and options; see :mod:`MFFMTCore.serving.protocol`).

    Args:
        inputs: image files or folders to segment and classify.
        output_dir: folder for the results.
        lesion_threshold: lesion probability threshold (:mod:`MFFMTCore.base.thresholds`); None uses the model's.
        roi: (x, y, w, h) pixel box that restricts each frame (the paper's ROI mode).
        gradcam: also write Grad-CAM heat maps.
        overwrite: replace results already in ``output_dir``.
        dicom: also write a DICOM Segmentation and Structured Report for DICOM inputs (``--dicom``).

    Raises:
        ValueError: no input, a bad threshold or a malformed ROI.
    """
    fields: dict[str, Any] = {"inputs": [_absolute(path) for path in inputs], "output": _absolute(output_dir),
                              "gradcam": bool(gradcam), "overwrite": bool(overwrite)}
    if not fields["inputs"]:
        raise ValueError("nothing to segment: no input files")
    if lesion_threshold is not None:
        fields["threshold"] = check_threshold(lesion_threshold)
    if roi is not None:
        fields["roi"] = [int(value) for value in roi_argument(roi).split(",")]
    if dicom:
        fields["dicom"] = True
    return fields


def camel_case(name: str) -> str:
    """An option's name as Slicer spells keywords and parameters: ``batch_size`` -> ``batchSize``."""
    first, *rest = name.split("_")
    return first + "".join(part.capitalize() for part in rest)


#: The options a caller may give training, by the keyword that gives them: each option of
#: ``mffmt train`` (:data:`~MFFMTCore.base.train_options.OPTIONS`) by its camelCase name, Slicer's
#: convention (``initModel``, ``batchSize``, ``labelSmoothing``), and by its own name (``init_model``).
#: Left out: what the caller sets otherwise (data, run folder, device, stop file, the terminal bar).
TRAIN_KEYWORDS: dict[str, str] = {
    keyword: name for name, declared in OPTIONS.items()
    if declared.command_line and name not in ("data", "output", "device", "stop_file")
    for keyword in (camel_case(name), name)}


def train_options(keywords: Mapping[str, Any]) -> dict[str, Any]:
    """Training options given as keywords (:data:`TRAIN_KEYWORDS`, either spelling) -> by option name.

    Raises:
        TypeError: a keyword that is no option, or one option given twice (``initModel`` and ``init_model``).
    """
    options: dict[str, Any] = {}
    for keyword, value in keywords.items():
        name = TRAIN_KEYWORDS.get(keyword)
        if name is None:
            known = ", ".join(sorted({camel_case(name) for name in TRAIN_KEYWORDS.values()}))
            raise TypeError(f"{keyword!r} is not a training option; the options are {known} "
                            "(or mffmt train's own names: init_model, batch_size, ...)")
        if name in options:
            raise TypeError(f"training option {camel_case(name)!r} is given twice ({name!r} is the same option)")
        options[name] = value
    return options


def train_command(
    python: str | os.PathLike,
    data: Iterable[str | os.PathLike],
    output_dir: str | os.PathLike,
    *,
    device: str = "auto",
    progress: str | None = None,
    stop_file: str | os.PathLike | None = None,
    **options: Any,
) -> list[str]:
    """The argument list of ``python -m MFFMTCore train``, its values checked as the command checks them.

    Args:
        python: the Python executable (Slicer's ``PythonSlicer``).
        data: dataset folders (BUSI or BUS-BRA layout) and datalist files (``--data``, repeated).
        output_dir: the run folder (``--output``; see :class:`MFFMTCore.base.run_folder.RunFolder`).
        device: a ``--device`` value or a device of the panel (see :func:`device_argument`).
        progress: ``"bar"`` or ``"none"`` (``--progress``); a program reading the run's progress file
            passes ``"none"``. None leaves the command's default (a bar).
        stop_file: the run stops at a safe point when this file appears (``--stop-file``).
        options: any other option of ``mffmt train`` (:data:`TRAIN_KEYWORDS`: ``epochs=3``, ``lr=1e-4``,
            ``initModel=path`` or ``init_model=path`` ...); None leaves it to the command's preset or
            default. Paths are made absolute.

    Raises:
        MFFMTError: a value the command would refuse (named by its option); TypeError: an unknown option.
    """
    data = [_absolute(path) for path in data]
    OPTIONS["data"].check(data)
    args = [str(python), "-m", "MFFMTCore", "train", *OPTIONS["data"].arguments(data),
            "--output", _absolute(output_dir), "--device", device_argument(device)]
    for name, value in {**train_options(options), "stop_file": stop_file}.items():
        if value is None:
            continue
        declared = OPTIONS[name]
        if declared.path:
            value = _absolute(value)
        declared.check(value)
        args += declared.arguments(value)
    if progress is not None:
        args += ["--progress", progress]
    return args


def _absolute(path: str | os.PathLike) -> str:
    """``path`` made absolute against this process's working folder (the child runs elsewhere)."""
    return os.path.abspath(os.fspath(path))


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
