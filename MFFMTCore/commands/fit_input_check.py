"""``mffmt fit-input-check``: store in a model file where breast B-mode frames lie in its feature space.

Runs the model on its training frames (the split it was trained with), fits the statistics of the
per-frame input check (see MFFMTCore.inference.input_check), measures on the validation frames the
share of breast frames it flags, and writes a copy of the model file holding the statistics. The
model file given is never changed. Prints the report (JSON) and writes it beside the output.
``mffmt train`` fits these statistics itself at the end of every run (its limit on the run's
validation frames: MFFMTCore.model_completion); this command is for model files made otherwise.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MFFMTCore.commands.options import (
    Progress,
    add_device,
    add_progress,
    float_between,
    output_path,
    positive_int,
)
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import write_text_atomic
from MFFMTCore.inference.input_check import (
    FeatureRecorder,
    FeatureStatistics,
    assess_frames,
    write_statistics,
)
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_completion import spread_evenly
from MFFMTCore.model_file import read_model_checksum, read_model_info
from MFFMTCore.training.datasplit import plan_split


def _frames(
    predictor: Predictor, paths: Sequence[str], progress: Callable[[str], None] | None
) -> tuple[np.ndarray, np.ndarray, list[tuple[str, int]]]:
    """Features (n, D), colour shares (n,) and (file, frame) of every frame of ``paths``, as predict sees them."""
    features, colours, names = [], [], []
    for path in paths:
        with FeatureRecorder(predictor.model) as recorder:
            result = predictor.predict(path)
        features.append(recorder.take())
        colours.extend(frame.input_check.colour for frame in result.frames)
        names.extend((str(path), frame.frame) for frame in result.frames)
        if progress is not None:
            progress(str(path))
    return np.concatenate(features), np.asarray(colours), names


def fit_input_check(
    model_path: str | os.PathLike,
    output: str | os.PathLike,
    data: Sequence[str] | None = None,
    others: Sequence[str] = (),
    max_train_frames: int | None = None,
    quantile: float = 0.995,
    neighbours: int = 20,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit the feature statistics of ``model_path`` and write a copy of it holding them to ``output``.

    Args:
        model_path: the model file (never changed).
        output: the model file to write (weights identical, metadata with the statistics).
        data: dataset folders or datalists; default the ones the model was trained on.
        others: files known not to be breast B-mode (e.g. pydicom's cardiac, obstetric and Doppler
            examples); the report lists which of their frames are flagged.
        max_train_frames: fit on at most this many training images, spread evenly (for speed).
        quantile: quantile of the training frames' distances that becomes the limit.
        neighbours: the nearest training frame whose distance is a frame's distance.
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`).
        progress: called with each file's name after it is done.

    Returns:
        The report: frames used, the validation false-alarm rate (overall, by check, per dataset),
        and the flags of ``others``.
    """
    info = read_model_info(model_path)
    split = info.training.get("split") or {}
    data = list(data) if data else list(info.training.get("data") or [])
    if not data:
        raise MFFMTError(model_path, "the model file does not record its training data; pass the data folders")
    train, validation, _ = plan_split(data, float(split.get("val_fraction", 0.2)), int(split.get("seed", 0)))
    predictor = Predictor(model_path, device=device)
    predictor.input_statistics = None  # measure with the statistics fitted here, not with stored ones
    train = spread_evenly(train, max_train_frames)
    train_features, _, _ = _frames(predictor, [record.image for record in train], progress)
    statistics = FeatureStatistics.fit(
        train_features, neighbours=neighbours, quantile=quantile,
        fitted={"model_sha256_weights": read_model_checksum(model_path), "data": data,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")},
    )
    val_features, val_colour, val_names = _frames(predictor, [record.image for record in validation], progress)
    checks = assess_frames(val_colour, statistics.distance(val_features))
    dataset_of = {record.image: record.dataset for record in validation}
    per_dataset: dict[str, list[bool]] = {}
    for (name, _), check in zip(val_names, checks):
        per_dataset.setdefault(dataset_of[name], []).append(check.flagged)
    report: dict[str, Any] = {
        "model": str(model_path), "output": str(output), "data": data,
        "train_frames": len(train_features), "validation_frames": len(checks),
        "validation_flagged": float(np.mean([check.flagged for check in checks])),
        "validation_flagged_by_colour": float(np.mean([check.flagged and check.reason.startswith("colour")
                                                       for check in checks])),
        "validation_flagged_by_features": float(np.mean([check.flagged and not check.reason.startswith("colour")
                                                         for check in checks])),
        "validation_flagged_per_dataset": {name: float(np.mean(flags)) for name, flags in per_dataset.items()},
        "validation_flagged_files": sorted({name for (name, _), check in zip(val_names, checks) if check.flagged}),
        "limit": statistics.limit,
    }
    if others:
        other_features, other_colour, other_names = _frames(predictor, list(others), progress)
        other_checks = assess_frames(other_colour, statistics.distance(other_features))
        report["others"] = {}
        for (name, frame), check in zip(other_names, other_checks):
            report["others"].setdefault(Path(name).name, []).append(
                {"frame": frame, "flagged": check.flagged, "score": round(check.score, 3), "reason": check.reason})
        report["others_all_flagged"] = all(check.flagged for check in other_checks)
    statistics.fitted["validation_flagged"] = report["validation_flagged"]
    write_statistics(model_path, output, statistics)
    return report


EXAMPLES = """examples:
  mffmt fit-input-check MFFMTCore/models/mffmt18_default.safetensors --output /tmp/mffmt18_checked.safetensors
  mffmt fit-input-check runs/m/model.safetensors --data ../shared/data/busi --data ../shared/data/busbra \\
      --others "$(python -c 'import pydicom.data as d; print(d.get_testdata_file("examples_ybr_color.dcm"))')" \\
      --output runs/m/model_checked.safetensors"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-input-check", help="fit the breast B-mode input check of a model file on its training data",
        description=__doc__.replace("``", ""), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="model file (read only)")
    parser.add_argument("--output", required=True, type=output_path, metavar="FILE",
                        help="model file to write, with the statistics")
    parser.add_argument("--data", action="append", metavar="PATH",
                        help="dataset folder or datalist (repeat; default: the data the model was trained on)")
    parser.add_argument("--others", nargs="*", default=[], metavar="FILE",
                        help="files known not to be breast B-mode: the report says which frames are flagged")
    parser.add_argument("--max-train-frames", type=positive_int, metavar="N", help="fit on at most N training images")
    parser.add_argument("--quantile", type=float_between(0.5, 1.0), default=0.995,
                        help="quantile of the training frames' distances that becomes the limit (default 0.995)")
    parser.add_argument("--neighbours", type=positive_int, default=20, metavar="K",
                        help="a frame's distance is its cosine distance to the K-th nearest training frame (default 20)")
    add_device(parser)
    add_progress(parser, help="bar: a bar of the files done on stderr (default); json: one JSON event per file "
                              "on stdout; none: nothing (the report is printed after the events in any case)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    progress = Progress(args.progress, unit="file")
    progress.event("start", output=str(args.output))
    report = fit_input_check(args.model, args.output, data=args.data, others=args.others,
                             max_train_frames=args.max_train_frames, quantile=args.quantile,
                             neighbours=args.neighbours, device=args.device,
                             progress=lambda name: progress.advance(input=name))
    progress.close()
    progress.event("done", done=progress.done, output=str(args.output))
    text = json.dumps(report, indent=1, allow_nan=False)
    write_text_atomic(f"{args.output}.input_check.json", text + "\n")
    print(text)
    return 0
