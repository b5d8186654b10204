"""Predict on many files into one output folder, as ``mffmt predict`` does; never lose finished work.

- Folders are searched recursively for image files (:func:`MFFMTCore.files.is_image_file`); hidden
  files and anything inside the output folder are left out. Every file found is predicted, masks
  included (``*_mask.png`` of BUSI): pass the images, not the dataset folder, to avoid that. A file
  named explicitly is always tried, whatever its suffix. A DICOM series split over several files
  is several inputs; give such a series as a single multi-frame file or volume instead.
- Each input gets a unique stem: its file name without the image suffix, followed by its parent
  folder's name when two inputs share a name; an input keeps the stem an earlier run gave it.
- An input that fails (unreadable, not an image, NaN pixels, too small, ROI outside the frame, a
  symbolic-link loop) gets a row with its error; the others go on. results.csv and results.json
  are rewritten after every input, so stopping (Ctrl-C) loses at most the input in progress.
- One run at a time per output folder (:class:`MFFMTCore.folder_lock.FolderLock`); temporary files
  of an interrupted earlier run are removed when the next one starts.
- A rerun skips an input only when an earlier run finished it from the same content (SHA-256 of
  the file), with the same model (its checksum), threshold and ROI, and its output files are all
  there; its rows are kept. ``overwrite`` redoes the inputs given and keeps every other input's rows.
- Inputs are only ever read, and a file predict did not write is never replaced: an input whose
  output name is taken by such a file fails, naming it, unless ``overwrite``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from MFFMTCore.base.model_metadata import calibration_note
from MFFMTCore.base.results_schema import result_columns
from MFFMTCore.base.roi import RoiInput
from MFFMTCore.errors import MFFMTError, one_line
from MFFMTCore.files import IMAGE_SUFFIXES, image_stem, is_image_file, remove_temporaries
from MFFMTCore.folder_lock import FolderLock
from MFFMTCore.inference.dicom_export import dicom_output_paths, write_dicom_results
from MFFMTCore.inference.outputs import output_paths, write_outputs
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.inference.results_table import (
    CSV_NAME,
    JSON_NAME,
    error_row,
    frame_rows,
    read_results_document,
    write_results,
)
from MFFMTCore.model_file import read_model_checksum
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
        MFFMTError: a folder given holds no image file, or is (inside) the excluded folder.
    """
    excluded = Path(os.path.realpath(exclude)) if exclude is not None else None
    found: list[Path] = []
    for path in map(Path, paths):
        if not path.is_dir():
            found.append(path.absolute())
            continue
        if excluded is not None and Path(os.path.realpath(path)).is_relative_to(excluded):
            raise MFFMTError(path, "is the output folder or inside it: its images would be mixed with "
                                   "predict's outputs; choose another --output")
        images = [
            file.absolute()
            for file in sorted(path.rglob("*"))
            if file.is_file()
            and is_image_file(file)
            and not any(part.startswith(".") for part in file.relative_to(path).parts)
            and (excluded is None or not Path(os.path.realpath(file)).is_relative_to(excluded))
        ]
        if not images:
            raise MFFMTError(path, f"folder holds no image files ({', '.join(IMAGE_SUFFIXES)})")
        found.extend(images)
    return list(dict.fromkeys(found))  # each file once, in the order given


def assign_stems(inputs: Sequence[Path], known: dict[str, str], directory: Path) -> dict[str, str]:
    """Unique output stems for ``inputs`` (absolute paths); ``known`` holds earlier runs' stems.

    A stem is never one whose output files would overwrite an input.
    """
    stems = dict(known)
    taken = set(stems.values())
    # realpath, unlike Path.resolve, does not raise on a symbolic-link loop (that input fails later).
    protected = {os.path.realpath(path) for path in inputs}
    counts = Counter(image_stem(path) for path in inputs)

    def usable(stem: str) -> bool:
        paths = [*output_paths(directory, stem, gradcam=True).values(), *dicom_output_paths(directory, stem).values()]
        return stem not in taken and not any(os.path.realpath(path) in protected for path in paths)

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


def content_hash(path: Path) -> str:
    """SHA-256 of an input's bytes (of a DICOM folder: every file's relative name and bytes).

    Raises:
        OSError: the input cannot be read (missing, a symbolic-link loop, no permission).
    """
    digest = hashlib.sha256()
    files = sorted(file for file in path.rglob("*") if file.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(f"{file.relative_to(path).as_posix()}|".encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_output_folder(output: str | os.PathLike, overwrite: bool = False) -> None:
    """Check that predict can write into ``output`` before any model is loaded or network run.

    Creates the folder, checks that no other run holds it and that it is writable, and that its
    results files, if any, are predict's.

    Raises:
        MFFMTError: ``output`` is a file, another run holds it, or its results files are not predict's.
        OSError: the folder cannot be created or written (read-only, disk full).
    """
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise MFFMTError(output, "is a file, not a folder; --output must name a folder")
    with FolderLock(output, "mffmt predict"):
        _previous_results(output, overwrite)


def _previous_results(output: Path, overwrite: bool) -> dict[str, Any] | None:
    """The folder's earlier results document; None for a fresh folder (or a damaged one with ``overwrite``)."""
    try:
        previous = read_results_document(output)
    except MFFMTError:
        if overwrite:
            return None
        raise
    if previous is None and (output / CSV_NAME).exists() and not overwrite:
        raise MFFMTError(output / CSV_NAME, f"exists without {JSON_NAME}, so predict did not write it; "
                                            "remove it, choose another --output, or use --overwrite")
    return previous


def _model_document(predictor: Predictor) -> dict[str, Any]:
    info = predictor.info
    return {
        "path": str(predictor.model_path.resolve()),
        "sha256": read_model_checksum(predictor.model_path),
        "name": info.name,
        "created": info.created,
        "architecture": info.architecture,
        "class_names": info.class_names,
        "input_size": info.input_size,
        "threshold": info.threshold,
        "validation": info.validation,
        "calibration": calibration_note(asdict(info)),  # None when calibrated
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
        overwrite: redo the inputs given even when an earlier run finished them, and replace
            files in their output names that predict did not write.
        progress: called as ``progress(outcome, done, total)`` after each input.
        imaging_region: where the scan is without an ROI (see :meth:`Predictor.predict`).
        dicom: for DICOM inputs, also write a DICOM Segmentation and Structured Report
            (:mod:`MFFMTCore.inference.dicom_export`).

    Raises:
        FolderLockedError: another run is writing into ``output``.
        MFFMTError: the folder's results files are damaged or not predict's (unless ``overwrite``).
        OSError: the folder or the results files cannot be written.
    """
    output = Path(output)
    with FolderLock(output, "mffmt predict"):
        remove_temporaries(output)
        return _predict_locked(predictor, inputs, output, threshold, roi, gradcam, overwrite, progress,
                               imaging_region, dicom)


def _predict_locked(
    predictor: Predictor,
    inputs: Sequence[Path],
    output: Path,
    threshold: float | None,
    roi: RoiInput | None,
    gradcam: bool,
    overwrite: bool,
    progress: Callable[[InputOutcome, int, int], None] | None,
    imaging_region: str,
    dicom: bool,
) -> BatchSummary:
    """:func:`predict_files` while holding the folder's lock."""
    threshold = predictor.info.threshold if threshold is None else float(threshold)
    model = _model_document(predictor)
    settings = {"model_sha256": model["sha256"], "threshold": threshold,
                "roi": list(roi) if roi is not None else None, "imaging_region": imaging_region, "dicom": dicom}
    previous = _previous_results(output, overwrite)
    entries: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    if previous is not None:
        entries = {entry["input"]: entry for entry in previous["inputs"]}
        for row in previous.get("rows", []):
            rows.setdefault(row["input"], []).append(row)
    stems = assign_stems(inputs, {key: entry["stem"] for key, entry in entries.items()}, output)
    columns = result_columns(predictor.class_names)
    # Files this folder's runs wrote: the only ones predict may replace without --overwrite.
    ours = {os.path.realpath(file) for entry in entries.values() for file in (entry.get("outputs") or {}).values()}

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
        try:
            digest: str | None = content_hash(path)
        except OSError:
            digest = None  # unreadable: _predict_one reports why
        foreign = [file for file in paths.values()
                   if (file.exists() or file.is_symlink()) and os.path.realpath(file) not in ours]
        if (
            not overwrite
            and earlier is not None
            and earlier.get("status") == "done"
            and earlier.get("settings") == settings
            and digest is not None and earlier.get("sha256") == digest
            and all(file.is_file() for file in paths.values())
        ):
            outcome = InputOutcome(key, stem, "skipped", outputs=earlier.get("outputs", {}))
        else:
            if foreign and not overwrite:
                outcome, entry = _failed(path, stem, time.perf_counter(), rows, MFFMTError(
                    foreign[0], f"exists and was not written by mffmt predict, so it is kept and {path} is not "
                                "predicted; remove it, choose another --output, or use --overwrite"))
            else:
                outcome, entry = _predict_one(predictor, path, stem, output, threshold, roi, gradcam, rows,
                                              imaging_region, dicom)
            ours.update(os.path.realpath(file) for file in entry.get("outputs", {}).values())
            entries[key] = entry | {"settings": settings, "sha256": digest}
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
        return _failed(path, stem, started, rows, error)
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


def _failed(
    path: Path, stem: str, started: float, rows: dict[str, list[dict[str, Any]]], error: BaseException
) -> tuple[InputOutcome, dict[str, Any]]:
    """The outcome, error row and entry of an input that failed with ``error``."""
    key = str(path)
    if isinstance(error, OSError) and error.strerror:
        message = f"{error.filename or path}: {error.strerror}"
    elif key in str(error):
        message = str(error)
    elif isinstance(error, MFFMTError):  # e.g. an ROI that misses this input's frame: say which input
        message = f"{path}: {error}"
    else:
        message = f"{path}: {type(error).__name__}: {error}"
    message = one_line(message)
    outcome = InputOutcome(key, stem, "failed", error=message, seconds=time.perf_counter() - started)
    rows[key] = [error_row(key, message)]
    return outcome, {"input": key, "stem": stem, "status": "failed", "error": message}

