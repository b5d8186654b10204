"""Evaluate a model file on labelled data: metrics.json, roc.png, confusion_matrix.png, predictions.csv.

The network sees each image as it saw its training data: the input size, intensity scaling and
sample mode (whole frame or lesion crop) come from the model file. Images that cannot be read are
listed (in ``metrics.json`` and ``predictions.csv``) and the others are still evaluated. An image
listed twice (the same content under two names or in two datasets) is evaluated once; the extra
entries are listed under ``duplicates``.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.labels import CLASS_NAMES
from MFFMTCore.base.progress_bar import progress_bar
from MFFMTCore.base.run_folder import read_split
from MFFMTCore.base.spread import evenly
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.data import DatasetError, MFFMTDataset, SampleRecord, make_samples, read_dataset, record_key
from MFFMTCore.data.records import unique_records
from MFFMTCore.devices import torch_device
from MFFMTCore.evaluation.metrics import grouped_report
from MFFMTCore.evaluation.plots import plot_confusion_matrix, plot_roc
from MFFMTCore.evaluation.predictions import predict_rows
from MFFMTCore.files import write_json_atomic, write_text_atomic
from MFFMTCore.model_file import ModelFileError, load_model, resolve_model_path
from MFFMTCore.network.norm_adaptation import NormAdaptation, adapt_to_frames

CSV_COLUMNS = ("id", "dataset", "scanner", "label", "p_malignant", "prediction", "correct", "dice",
               "truth_px", "prediction_px", "birads_label", "birads_prediction", "error")
DICE_NOTE = ("dice: mean per-image Dice over images whose mask holds a lesion, at the network input size; "
             "dice_all also counts lesion-free images (1.0 when nothing is predicted, else 0.0); "
             "false_lesion_rate: share of lesion-free images with any predicted lesion pixel")


def _readable(dataset: MFFMTDataset, show: bool) -> tuple[list[int], list[dict[str, str]]]:
    """Indices of the samples that load, and the failures of the others (each named)."""
    good, failures = [], []
    for index in progress_bar(range(len(dataset)), desc="reading images", unit="image", disable=not show):
        try:
            dataset[index]
        except DatasetError as error:
            sample = dataset.samples[index]
            failures.append({"id": str(sample["id"]), "dataset": str(sample.get("dataset") or ""),
                             "error": str(error)})
        else:
            good.append(index)
    return good, failures


def _counted(batches: Iterable[dict[str, Any]], total: int,
             on_batch: Callable[[int, int], None] | None) -> Iterator[dict[str, Any]]:
    """``batches``, calling ``on_batch(images done, total)`` once each batch is predicted."""
    done = 0
    for batch in batches:
        yield batch
        done += len(batch["id"])
        if on_batch is not None:
            on_batch(done, total)


def _class_name(index: int) -> str:
    """The class name of a class index; "" for an image without a class (index -1)."""
    return CLASS_NAMES[index] if index >= 0 else ""


def _csv_text(rows: list[dict[str, Any]], failures: list[dict[str, str]], threshold: float) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        called = int(row["p_malignant"] >= threshold)
        writer.writerow({
            # "normal": no class label and a lesion-free mask (BUSI's normal images).
            **row, "label": "normal" if row["label"] < 0 and row["truth_empty"] else _class_name(row["label"]),
            "p_malignant": f"{row['p_malignant']:.6f}",
            "prediction": CLASS_NAMES[called], "correct": "" if row["label"] < 0 else int(called == row["label"]),
            "dice": "" if row["dice"] is None else f"{row['dice']:.6f}",
            "truth_px": "" if row["truth_px"] is None else row["truth_px"], "error": "",
        })
    for failure in failures:
        writer.writerow(failure)
    return buffer.getvalue()


def evaluate(
    model_path: str | os.PathLike | None,
    records: list[SampleRecord],
    output: str | os.PathLike,
    mode: str | None = None,
    margin: float | None = None,
    batch_size: int = 8,
    device: str = "auto",
    malignancy_threshold: float = 0.5,
    progress: bool = True,
    on_batch: Callable[[int, int], None] | None = None,
    adapt_norm: NormAdaptation | None = None,
) -> dict[str, Any]:
    """Evaluate a model on ``records`` and write the results into ``output``.

    Args:
        model_path: model file; None uses the model shipped with MFFMTCore.
        records: labelled images.
        output: folder for metrics.json, roc.png, confusion_matrix.png and predictions.csv.
        mode: ``frame`` or ``lesion``; None uses the mode the model was trained with.
        margin: lesion-crop margin; None uses the model's.
        batch_size: images per network call.
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`).
        malignancy_threshold: malignancy probability from which a case is called malignant.
        progress: show progress bars.
        on_batch: called after each batch with (images done, images to do).
        adapt_norm: first adapt the network's BatchNorm statistics to the images (taken as one
            scanner's; :mod:`MFFMTCore.network.norm_adaptation`), from up to ``max_frames`` of them
            spread evenly; recorded in metrics.json as ``norm_adaptation``. None: no adaptation, no key.

    Returns:
        The content of metrics.json.

    Raises:
        MFFMTError: a device this computer lacks, or a malignancy threshold outside (0, 1).
        ModelFileError: the model file cannot be used.
        DatasetError: no image at all could be evaluated.
    """
    device = torch_device(device)
    malignancy_threshold = check_threshold(malignancy_threshold, "malignancy threshold")
    path = resolve_model_path(model_path)
    model, info = load_model(path, device=device)
    records, duplicates = unique_records(records)  # one image listed twice must not count twice
    if info.intensity != "minmax":
        raise ModelFileError(path, f"intensity normalisation {info.intensity!r} is not supported (only 'minmax')")
    recipe = info.training.get("recipe", {})
    mode = mode or recipe.get("mode", "frame")
    margin = margin if margin is not None else recipe.get("margin", 0.2)
    dataset = MFFMTDataset(make_samples(records, mode, margin, progress=progress), train=False,
                           size=tuple(info.input_size))
    good, failures = _readable(dataset, progress)
    if not good:
        raise DatasetError(f"all {len(failures)} images", f"none can be read; the first: {failures[0]['error']}")
    adaptation = None
    if adapt_norm is not None:
        model, adaptation = _adapted(model, Subset(dataset, good), adapt_norm, batch_size, device)
    loader = DataLoader(Subset(dataset, good), batch_size=batch_size, shuffle=False)
    batches = progress_bar(_counted(loader, len(good), on_batch), desc="evaluating", unit="batch",
                           total=len(loader), disable=not progress)
    rows, _ = predict_rows(model, batches, device, threshold=info.threshold)
    report = grouped_report(rows, malignancy_threshold)
    output = Path(output)
    metrics = json_safe({
        "model": str(path), "model_name": info.name, "input_size": info.input_size, "mode": mode,
        "lesion_threshold": info.threshold, "malignancy_threshold": malignancy_threshold, "samples": len(rows), "failed": failures, "notes": DICE_NOTE,
        "duplicates": [{"image": extra.image, "same_as": first.image} for extra, first in duplicates],
        **({"norm_adaptation": adaptation} if adaptation is not None else {}),
        **report,
    })
    write_json_atomic(output / "metrics.json", metrics)
    write_text_atomic(output / "predictions.csv", _csv_text(rows, failures, malignancy_threshold))
    curves = {"all": ([r["label"] for r in rows], [r["p_malignant"] for r in rows])}
    for name in report["datasets"]:
        chosen = [r for r in rows if r["dataset"] == name]
        curves[name] = ([r["label"] for r in chosen], [r["p_malignant"] for r in chosen])
    plot_roc(curves if len(curves) > 2 else {"all": curves["all"]}, output / "roc.png",
             title=f"ROC curve, malignant positive ({info.name})")
    plot_confusion_matrix(report["overall"]["confusion_matrix"], output / "confusion_matrix.png",
                          class_names=info.class_names, title=f"Confusion matrix at p >= {malignancy_threshold:g}")
    return metrics


def _adapted(model: torch.nn.Module, images: Subset, adaptation: NormAdaptation, batch_size: int,
             device: torch.device) -> tuple[torch.nn.Module, dict[str, Any]]:
    """``model`` adapted to up to ``adaptation.max_frames`` of ``images`` (spread evenly), and the record;
    ``model`` itself when there are fewer than ``adaptation.min_frames``."""
    chosen = Subset(images, evenly(len(images), adaptation.max_frames))
    batches = (batch["image"].to(device) for batch in DataLoader(chosen, batch_size=batch_size, shuffle=False))
    return adapt_to_frames(model, batches, len(chosen), len(chosen), adaptation)


def read_evaluation_records(paths: list[str], split: str | os.PathLike | None = None) -> list[SampleRecord]:
    """Read datasets; with ``split`` (a run's split.json) keep only its validation images.

    Raises:
        DatasetError: a dataset cannot be read, or the split leaves no image.
    """
    records = [record for path in paths for record in read_dataset(path)]
    if split is not None:
        keep = set(read_split(split)["validation"])
        records = [record for record in records if record_key(record) in keep]
        if not records:
            raise DatasetError(split, "none of its validation images is in the data given")
    return records

