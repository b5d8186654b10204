"""Predict on many files into one output folder, as ``mffmt predict`` does; never lose finished work.

- Folders are searched recursively for image files (:func:`MFFMTCore.io.is_image_file`); hidden
  files and anything inside the output folder are left out. Every file found is predicted, masks
  included (``*_mask.png`` of BUSI): pass the images, not the dataset folder, to avoid that. A file
  named explicitly is always tried, whatever its suffix. A DICOM series split over several files
  is several inputs; give such a series as a single multi-frame file or volume instead.
- Each input gets a unique stem: its file name without the image suffix, followed by its parent
  folder's name when two inputs share a name; an input keeps the stem an earlier run gave it.
- An input that fails (unreadable, not an image, ROI outside the frame) gets a row with its error;
  the others go on. results.csv and results.json are rewritten after every input, so stopping
  (Ctrl-C) loses at most the input in progress.
- A rerun skips inputs done earlier with the same model, threshold and ROI whose output files are
  all there, and keeps their rows; ``overwrite`` redoes them. Inputs are only ever read.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MFFMTCore.inference.dicom_export import dicom_output_paths, write_dicom_results
from MFFMTCore.inference.outputs import output_paths, write_outputs
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.inference.results_table import (
    error_row,
    frame_rows,
    read_results,
    result_columns,
    write_results,
)
from MFFMTCore.inference.roi import RoiInput
from MFFMTCore.io import IMAGE_SUFFIXES, image_stem, is_image_file
from MFFMTCore.version import __version__


@dataclass
class InputOutcome:
    """What happened to one input.

    Args:
        input: absolute path of the input.
        stem: the name its output files start with.
        status: ``"done"``, ``"skipped"`` (done by an earlier run) or ``"failed"``.
        error: why it failed, naming the file and the problem.
        outputs: output name -> file path.
        seconds: time spent on it in this run.
    """

    input: str
    stem: str
    status: str
    error: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


@dataclass
class BatchSummary:
    outcomes: list[InputOutcome]

    @property
    def failed(self) -> list[InputOutcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]


def find_inputs(paths: Sequence[str | os.PathLike], exclude: str | os.PathLike | None = None) -> list[Path]:
    """Files to predict: the files given, and the image files found in the folders given (recursively).

    Args:
        paths: files and folders.
        exclude: a folder whose contents are never inputs (the output folder).

    Raises:
        ValueError: a folder given holds no image file.
    """
    excluded = Path(exclude).resolve() if exclude is not None else None
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path.absolute())
            continue
        images = [
            file.absolute()
            for file in sorted(path.rglob("*"))
            if file.is_file()
            and is_image_file(file)
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
            and (excluded is None or not file.resolve().is_relative_to(excluded))
        ]
        if not images:
            raise ValueError(f"{path}: folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        found.extend(images)
    return list(dict.fromkeys(found))  # each file once, in the order given


def assign_stems(inputs: Sequence[Path], known: dict[str, str], directory: Path) -> dict[str, str]:
    """Unique output stems for ``inputs`` (absolute paths); ``known`` holds earlier runs' stems.

    A stem is never one whose output files would overwrite an input.
    """
    stems = dict(known)
    taken = set(stems.values())
    protected = {str(path.resolve()) for path in inputs}
    counts = Counter(image_stem(path) for path in inputs)

    def usable(stem: str) -> bool:
        paths = [*output_paths(directory, stem, gradcam=True).values(), *dicom_output_paths(directory, stem).values()]
        return stem not in taken and not any(str(path.resolve()) in protected for path in paths)

    for path in inputs:
        if str(path) in stems:
            continue
        stem = image_stem(path)
        if counts[stem] > 1 or not usable(stem):
            stem = f"{stem}_{path.parent.name}" if path.parent.name else stem
        candidate, number = stem, 2
        while not usable(candidate):
            candidate, number = f"{stem}_{number}", number + 1
        stems[str(path)] = candidate
        taken.add(candidate)
    return stems


def _model_document(predictor: Predictor) -> dict[str, Any]:
    info = predictor.info
    return {
        "path": str(predictor.model_path.resolve()),
        "name": info.name,
        "created": info.created,
        "architecture": info.architecture,
        "class_names": info.class_names,
        "input_size": info.input_size,
        "threshold": info.threshold,
        "validation": info.validation,
    }


def predict_files(
    predictor: Predictor,
    inputs: Sequence[Path],
    output: str | os.PathLike,
    threshold: float | None = None,
    roi: RoiInput | None = None,
    gradcam: bool = False,
    overwrite: bool = False,
    progress: Callable[[InputOutcome, int, int], None] | None = None,
    imaging_region: str = "auto",
    dicom: bool = False,
) -> BatchSummary:
    """Predict on each input and write its outputs and the results tables into ``output``.

    Args:
        predictor: the loaded model.
        inputs: absolute file paths (see :func:`find_inputs`).
        output: output folder (created if needed).
        threshold: lesion threshold; default the model's.
        roi: (x, y, w, h) pixel box classified in every frame of every input (ROI mode).
        gradcam: also write Grad-CAM maps.
        overwrite: redo inputs an earlier run finished.
        progress: called as ``progress(outcome, done, total)`` after each input.
        imaging_region: where the scan is without an ROI (see :meth:`Predictor.predict`).
        dicom: for DICOM inputs, also write a DICOM Segmentation and Structured Report
            (:mod:`MFFMTCore.inference.dicom_export`).

    Raises:
        ValueError: the folder's results.json is damaged (unless ``overwrite``).
    """
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    threshold = predictor.info.threshold if threshold is None else float(threshold)
    model = _model_document(predictor)
    settings = {"model": model["path"], "model_created": model["created"], "threshold": threshold,
                "roi": list(roi) if roi is not None else None, "imaging_region": imaging_region,
                "dicom": dicom}
    previous = None if overwrite else read_results(output)
    entries: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    if previous is not None:
        entries = {entry["input"]: entry for entry in previous["inputs"]}
        for row in previous.get("rows", []):
            rows.setdefault(row["input"], []).append(row)
    stems = assign_stems(inputs, {key: entry["stem"] for key, entry in entries.items()}, output)
    columns = result_columns(predictor.class_names)

    def save() -> None:
        document = {
            "software": {"MFFMTCore": __version__},
            "model": model,
            "settings": settings,
            "columns": columns,
            "inputs": list(entries.values()),
            "rows": [row for key in entries for row in rows.get(key, [])],
        }
        write_results(output, document, columns)

    outcomes = []
    for done, path in enumerate(inputs, start=1):
        key, stem = str(path), stems[str(path)]
        paths = output_paths(output, stem, gradcam)
        earlier = entries.get(key)
        if (
            earlier is not None
            and earlier.get("status") == "done"
            and earlier.get("settings") == settings
            and all(file.is_file() for file in paths.values())
        ):
            outcome = InputOutcome(key, stem, "skipped", outputs=earlier.get("outputs", {}))
        else:
            outcome, entry = _predict_one(predictor, path, stem, output, threshold, roi, gradcam, rows,
                                          imaging_region, dicom)
            entries[key] = entry | {"settings": settings}
            save()
        outcomes.append(outcome)
        if progress is not None:
            progress(outcome, done, len(inputs))
    return BatchSummary(outcomes)


def _predict_one(
    predictor: Predictor,
    path: Path,
    stem: str,
    output: Path,
    threshold: float,
    roi: RoiInput | None,
    gradcam: bool,
    rows: dict[str, list[dict[str, Any]]],
    imaging_region: str = "auto",
    dicom: bool = False,
) -> tuple[InputOutcome, dict[str, Any]]:
    """Predict on one input, write its files and its rows; a failure becomes an error row."""
    key, started = str(path), time.perf_counter()
    try:
        result = predictor.predict(path, roi=roi, gradcam=gradcam, threshold=threshold,
                                   imaging_region=imaging_region)
        written = {name: str(file) for name, file in write_outputs(result, output, stem).items()}
        if dicom and result.input_frames is not None and result.input_frames.dicom is not None:
            written.update({name: str(file) for name, file in write_dicom_results(result, output, stem).items()})
    except Exception as error:  # one bad input must not stop the batch: its error is reported instead
        message = str(error) if key in str(error) else f"{path}: {type(error).__name__}: {error}"
        message = " ".join(message.split())  # one line: it is a CSV cell and a log line
        outcome = InputOutcome(key, stem, "failed", error=message, seconds=time.perf_counter() - started)
        rows[key] = [error_row(key, message)]
        return outcome, {"input": key, "stem": stem, "status": "failed", "error": message}
    outcome = InputOutcome(key, stem, "done", outputs=written, seconds=time.perf_counter() - started)
    rows[key] = frame_rows(result, key)
    summary = result.to_json()
    entry = {
        "input": key,
        "stem": stem,
        "status": "done",
        "error": None,
        "outputs": written,
        "seconds": round(outcome.seconds, 3),
        "frames": len(result.frames),
        "size": summary["size"],
        "geometry": summary["geometry"],
        "roi": summary["roi"],
        "clip": summary["clip"],
        "imaging_region": summary["imaging_region"],
        "notes": summary["notes"],
    }
    return outcome, entry

