"""Predict on many files into one output folder, as ``mffmt predict`` does; never lose finished work.

- Folders are searched recursively for image files (:func:`MFFMTCore.files.is_image_file`); hidden
  files and anything inside the output folder are left out. Every file found is predicted, masks
  included (``*_mask.png`` of BUSI): pass the images, not the dataset folder, to avoid that. A file
  named explicitly is always tried, whatever its suffix. A DICOM series split over several files
  is several inputs; give such a series as a single multi-frame file or volume instead.
- Each input gets a unique stem: its file name without the image suffix, followed by its parent
  folder's name when two inputs share a name; an input keeps the stem an earlier run gave it.
- An input that fails (unreadable, not an image, NaN pixels, too small, ROI outside the frame, a
  symbolic-link loop) gets a row with its error; the others go on at full speed.
- Frames of several inputs go through the network together (the predictor's ``batch_size``); the
  next inputs are read and the finished ones written in two threads beside it. On the CPU, with
  more than one input, several network calls of few torch threads each run at once, so that
  reading and writing never stall the network (:func:`network_plan`). results.csv and results.json
  are rewritten whenever the writer has caught up, and at least once a second.
  Stopping (Ctrl-C, a cancel) records every input whose files are written and drops the inputs in
  flight whole: no output file is left without its row.
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
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from MFFMTCore.base.model_metadata import calibration_note
from MFFMTCore.base.results_schema import (
    CSV_NAME,
    JSON_NAME,
    error_row,
    read_results_document,
    result_columns,
    results_document,
    write_results,
)
from MFFMTCore.base.roi import RoiInput
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.errors import MFFMTError, one_line
from MFFMTCore.files import (
    IMAGE_SUFFIXES,
    TEMPORARY_NAME_EXTRA,
    hash_file,
    image_files,
    image_stem,
    is_image_file,
    remove_temporaries,
)
from MFFMTCore.folder_lock import FolderLock
from MFFMTCore.inference.dicom_results import dicom_output_paths, export_dicom_results
from MFFMTCore.inference.journal import OutputJournal
from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS, OUTPUTS, output_paths, write_outputs
from MFFMTCore.inference.predictor import Predictor, PreparedInput
from MFFMTCore.inference.results_table import frame_rows
from MFFMTCore.model_file import read_model_checksum
from MFFMTCore.network.norm_adaptation import NormAdaptation


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
    """What a run did: each input's outcome, and the network's adaptation (``settings.norm_adaptation``
    of results.json; None without one)."""

    outcomes: list[InputOutcome]
    norm_adaptation: dict[str, Any] | None = None

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


def _planned_paths(directory: Path, stem: str) -> list[Path]:
    """Every file predict may write for ``stem`` (with Grad-CAM and DICOM results)."""
    return [*output_paths(directory, stem, gradcam=True, outputs=OUTPUTS).values(),
            *dicom_output_paths(directory, stem).values()]


def fit_stem(stem: str, directory: Path) -> str:
    """``stem``, shortened if its output names (and their temporary names) would be too long for the
    file system: cut and followed by ``~`` and a hash of the whole stem, so that it stays unique
    and the same stem is always cut the same way."""
    try:
        name_max = os.pathconf(directory, "PC_NAME_MAX")
    except (OSError, ValueError):
        name_max = 255
    longest = max(len(path.name.encode()) for path in _planned_paths(directory, ""))
    limit = name_max - longest - TEMPORARY_NAME_EXTRA
    if len(stem.encode()) <= limit:
        return stem
    tag = "~" + hashlib.sha256(stem.encode()).hexdigest()[:12]
    return stem.encode()[: limit - len(tag)].decode("utf-8", "ignore") + tag


def assign_stems(inputs: Sequence[Path], known: dict[str, str], directory: Path) -> dict[str, str]:
    """Unique output stems for ``inputs`` (absolute paths); ``known`` holds earlier runs' stems.

    A stem is never one whose output files would overwrite an input, and never one too long for the
    file system (:func:`fit_stem`).
    """
    stems = dict(known)
    taken = set(stems.values())
    # realpath, unlike Path.resolve, does not raise on a symbolic-link loop (that input fails later).
    protected = {os.path.realpath(path) for path in inputs}
    counts = Counter(image_stem(path) for path in inputs)

    def usable(stem: str) -> bool:
        return stem not in taken and not any(os.path.realpath(path) in protected
                                             for path in _planned_paths(directory, stem))

    for path in inputs:
        if str(path) in stems:
            continue
        stem = image_stem(path)
        if counts[stem] > 1 or not usable(fit_stem(stem, directory)):
            stem = f"{stem}_{path.parent.name}" if path.parent.name else stem
        candidate, number = fit_stem(stem, directory), 2
        while not usable(candidate):
            candidate, number = fit_stem(f"{stem}_{number}", directory), number + 1
        stems[str(path)] = candidate
        taken.add(candidate)
    return stems


def content_hash(path: Path) -> str:
    """SHA-256 of every file an input is read from (:func:`MFFMTCore.files.image_files`): a detached
    header and its data files, a DICOM folder's files with their relative names.

    Raises:
        OSError: the input cannot be read (missing, a symbolic-link loop, no permission).
    """
    digest = hashlib.sha256()
    for file in image_files(path):
        if file != path:
            digest.update(f"{file.relative_to(path).as_posix() if path.is_dir() else file.name}|".encode())
        hash_file(digest, file)
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
    outputs: Collection[str] = DEFAULT_OUTPUTS,
    frames_progress: Callable[[str, int, int], None] | None = None,
    adapt_norm: NormAdaptation | None = None,
) -> BatchSummary:
    """Predict on each input and write its outputs and the results tables into ``output``.

    Frames of several inputs go through the network together (``predictor.batch_size`` at a time);
    the next inputs are read and the finished ones written in two threads beside the network.

    Args:
        predictor: the loaded model.
        inputs: absolute file paths (see :func:`find_inputs`).
        output: output folder (created if needed).
        threshold: lesion threshold; default the model's.
        roi: (x, y, w, h) pixel box classified in every frame of every input (ROI mode).
        gradcam: also write Grad-CAM maps.
        overwrite: redo the inputs given even when an earlier run finished them, and replace
            files in their output names that predict did not write.
        progress: called as ``progress(outcome, done, total)`` after each input is recorded.
        imaging_region: where the scan is without an ROI (see :meth:`Predictor.predict`).
        outputs: the files to write of :data:`MFFMTCore.inference.outputs.OUTPUTS` (``dicom``: for
            DICOM inputs, a DICOM Segmentation and Structured Report,
            :mod:`MFFMTCore.inference.dicom_export`); the results tables are always written.
        frames_progress: called as ``frames_progress(input, frames_done, frames_total)`` after each
            network call for each input that had frames in it; raising from it (or from ``progress``)
            stops the run: inputs already written are recorded, the ones in flight leave no file.
        adapt_norm: adapt the network's BatchNorm statistics to the frames of all ``inputs`` first
            (:meth:`Predictor.adapted`: the inputs are taken as one scanner's frames); recorded in
            results.json's ``settings`` as ``norm_adaptation``, so an input finished with other
            statistics is redone. None: the model's own statistics, and no such key.

    Raises:
        FolderLockedError: another run is writing into ``output``.
        MFFMTError: the folder's results files are damaged or not predict's (unless ``overwrite``),
            or ``outputs`` names an unknown output.
        OSError: the folder or the results files cannot be written.
    """
    unknown = sorted(set(outputs) - set(OUTPUTS))
    if unknown:
        raise MFFMTError("outputs", f"unknown {', '.join(unknown)}; choose from {', '.join(OUTPUTS)}")
    output = Path(output)
    with FolderLock(output, "mffmt predict"):
        remove_temporaries(output)
        if adapt_norm is not None:
            predictor = predictor.adapted(inputs, adapt_norm, roi=roi, imaging_region=imaging_region)
        return _predict_locked(predictor, inputs, output, threshold, roi, gradcam, overwrite, progress,
                               imaging_region, [name for name in OUTPUTS if name in outputs], frames_progress)


@dataclass(eq=False)
class _Input:
    """One input on its way from the reader through the network to the writer.

    Args:
        path: the input.
        stem: its output stem.
        digest: SHA-256 of its content (None: unreadable).
        started: when its reading began.
        prepared: read and checked, waiting for (or through) the network; None when decided without it.
        outcome, entry, rows: what is recorded for it, once decided (skipped, failed or written).
        planned: the files it may write that are absent or this folder's own (journaled while written).
    """

    path: Path
    stem: str
    digest: str | None
    started: float
    prepared: PreparedInput | None = None
    outcome: InputOutcome | None = None
    entry: dict[str, Any] | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    planned: list[Path] = field(default_factory=list)  # files it may write (absent, or this folder's own)

    @property
    def frames(self) -> int:
        """Frames it holds in memory (for the queues' bounds)."""
        return self.prepared.stack.num_frames if self.prepared is not None else 0


class _FrameQueue:
    """A FIFO bounded by the frames its items hold (one item always fits), so that long clips do not pile up."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: deque[_Input | None] = deque()
        self._frames = 0
        self._condition = threading.Condition()

    def put(self, item: _Input | None) -> None:
        with self._condition:
            while self._items and self._frames >= self.limit:
                self._condition.wait()
            self._items.append(item)
            self._frames += item.frames if item is not None else 0
            self._condition.notify_all()

    def get(self) -> _Input | None:
        with self._condition:
            while not self._items:
                self._condition.wait()
            item = self._items.popleft()
            self._frames -= item.frames if item is not None else 0
            self._condition.notify_all()
            return item

    def empty(self) -> bool:
        with self._condition:
            return not self._items

    def clear(self) -> None:
        with self._condition:
            self._items.clear()
            self._frames = 0
            self._condition.notify_all()


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
    outputs: list[str],
    frames_progress: Callable[[str, int, int], None] | None,
) -> BatchSummary:
    """:func:`predict_files` while holding the folder's lock.

    Three threads: the reader (content hash, rerun decision, reading, imaging region) fills a
    queue; this thread gathers ``predictor.batch_size`` frames across inputs per network call and
    hands finished inputs, in input order, to the writer (post-processing, output files, rows,
    results tables). Both queues are bounded, so memory does not grow with the number of inputs.
    """
    threshold = check_threshold(predictor.info.threshold if threshold is None else float(threshold))
    model = _model_document(predictor)
    settings = {"model_sha256": model["sha256"], "threshold": threshold,
                "roi": list(roi) if roi is not None else None, "imaging_region": imaging_region, "outputs": outputs}
    if predictor.norm_adaptation is not None:  # absent without --adapt-norm: earlier runs' settings still match
        settings["norm_adaptation"] = predictor.norm_adaptation
    previous = _previous_results(output, overwrite)
    entries: dict[str, dict[str, Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {}
    if previous is not None:
        entries = {entry["input"]: entry for entry in previous["inputs"]}
        for row in previous.get("rows", []):
            rows.setdefault(row["input"], []).append(row)
    journal = OutputJournal(output)
    journal.recover(entries)  # an earlier run stopped between writing and recording: its leftovers go
    earlier_entries = dict(entries)
    stems = assign_stems(inputs, {key: entry["stem"] for key, entry in entries.items()}, output)
    columns = result_columns(predictor.class_names)
    # Files this folder's runs wrote: the only ones predict may replace without --overwrite.
    ours = {os.path.realpath(file) for entry in entries.values() for file in (entry.get("outputs") or {}).values()}

    def save() -> None:
        write_results(output, results_document(model, settings, columns, list(entries.values()),
                                               [row for key in entries for row in rows.get(key, [])]))
        journal.end()  # every file written so far is recorded now

    def read(path: Path) -> _Input:
        """Reader thread: decide whether ``path`` needs the network, and read it if so."""
        key, stem, started = str(path), stems[str(path)], time.perf_counter()
        paths = output_paths(output, stem, gradcam, outputs)
        earlier = earlier_entries.get(key)
        try:
            digest: str | None = content_hash(path)
        except OSError:
            digest = None  # unreadable: reading it reports why
        item = _Input(path, stem, digest, started)
        try:
            if (
                not overwrite
                and earlier is not None
                and earlier.get("status") == "done"
                and earlier.get("settings") == settings
                and digest is not None and earlier.get("sha256") == digest
                and all(file.is_file() for file in paths.values())
            ):
                item.outcome = InputOutcome(key, stem, "skipped", outputs=earlier.get("outputs", {}))
                return item
            # The file system may refuse to look at an output name: then this input fails, not the batch.
            foreign = [file for file in paths.values()
                       if (file.exists() or file.is_symlink()) and os.path.realpath(file) not in ours]
            # The files this input may write that are absent or this folder's own: journaled before writing.
            item.planned = [file for file in _planned_paths(output, stem)
                            if not (file.exists() or file.is_symlink()) or os.path.realpath(file) in ours]
            if foreign and not overwrite:
                raise MFFMTError(foreign[0], f"exists and was not written by mffmt predict, so it is kept and {path} "
                                             "is not predicted; remove it, choose another --output, or use --overwrite")
            # A clip streams its maps into their output files as its frames leave the network.
            item.prepared = predictor.prepare(path, roi=roi, gradcam=gradcam, threshold=threshold,
                                              imaging_region=imaging_region, maps_to=paths)
        except Exception as error:  # one bad input must not stop the batch: its error is reported instead
            item.outcome, item.entry, item.rows = _failed(path, stem, started, error)
        return item

    def write(item: _Input) -> None:
        """Writer thread: the input's files and rows, then the results tables."""
        if item.outcome is None:
            journal.begin(item.planned)  # write, then record: a kill in between leaves files the next run knows
            item.outcome, item.entry, item.rows = _write_one(predictor, item, output, outputs)
            if item.outcome.status == "failed":
                journal.abandon(item.planned)  # a failure after some files were written leaves none unrecorded
        if item.outcome.status != "skipped":
            entries[item.outcome.input] = item.entry | {"settings": settings, "sha256": item.digest}
            rows[item.outcome.input] = item.rows

    pipeline = _Pipeline(predictor, inputs, read, write, save, progress, frames_progress, gradcam)
    return BatchSummary(pipeline.run(), predictor.norm_adaptation)


# Network calls in flight at most: on many cores, a few calls of several threads each keep memory bounded.
_MAX_CALLS = 4


def network_plan(threads: int, device: torch.device, inputs: int, gradcam: bool) -> tuple[int, int]:
    """(network calls run at once, torch threads each) while the reader and writer threads work beside them.

    On the CPU their work (decoding, the imaging region, measurement, compressing the output files:
    about half as much as the network's own per frame) competes with the network's threads, and
    torch's threads wait for each other at every operation, so one of them descheduled stalls them
    all. Calls on frames of different inputs never wait for each other: ``threads`` calls of one
    thread keep every core busy whatever the reader and writer take (bench/bench_predict.py: 10-20%
    more frames/s than one call on 2 threads, on 2 cores). At most :data:`_MAX_CALLS` calls (each
    holding a batch of frames and their maps) run at once; more threads are shared among them. A
    single input has nothing to overlap, and Grad-CAM's backward pass shares hooks on the model:
    then one call on all ``threads``.

    Args:
        threads: torch threads set for the process (``--threads``, or torch's default).
        device: the network's device; on a GPU one call at a time, the CPU threads as they are.
        inputs: number of inputs of the run.
        gradcam: whether Grad-CAM maps are computed.
    """
    if device.type != "cpu" or inputs < 2 or gradcam or threads < 2:
        return 1, threads
    calls = min(threads, _MAX_CALLS)
    return calls, threads // calls


def _done() -> Future[None]:
    """A finished future (a call run in this thread)."""
    future: Future[None] = Future()
    future.set_result(None)
    return future


class _Pipeline:
    """Reader thread -> network (frames of several inputs per call; calls in worker threads, see
    :func:`network_plan`, or in this thread) -> writer thread.

    Args:
        predictor: runs the network.
        inputs: in order.
        read: path -> :class:`_Input` (in the reader thread; must not raise for a bad input).
        write: records an input whose network run is over (in the writer thread).
        save: writes the results tables (in the writer thread, and once more at the end).
        progress, frames_progress: as in :func:`predict_files`; called in this thread.
    """

    def __init__(self, predictor: Predictor, inputs: Sequence[Path], read: Callable[[Path], _Input],
                 write: Callable[[_Input], None], save: Callable[[], None],
                 progress: Callable[[InputOutcome, int, int], None] | None,
                 frames_progress: Callable[[str, int, int], None] | None, gradcam: bool = False):
        self.predictor, self.inputs, self.read, self.write, self.save = predictor, inputs, read, write, save
        self.gradcam = gradcam
        self.progress, self.frames_progress = progress, frames_progress
        limit = 2 * predictor.batch_size
        self.read_queue, self.write_queue = _FrameQueue(limit), _FrameQueue(limit)
        self.written: deque[InputOutcome] = deque()  # recorded by the writer, not yet reported
        self.outcomes: list[InputOutcome] = []
        self.stopping = threading.Event()  # cancelled: the reader stops, the writer drops what is queued
        # What stopped the reader or the writer (a bug; a results table that cannot be written).
        self.error: BaseException | None = None
        self.unsaved = False

    def run(self) -> list[InputOutcome]:
        reader = threading.Thread(target=self._reader, name="mffmt-predict-reader", daemon=True)
        writer = threading.Thread(target=self._writer, name="mffmt-predict-writer", daemon=True)
        threads = torch.get_num_threads()
        self.threads = threads
        self.calls, self.per_call = network_plan(threads, self.predictor.device, len(self.inputs), self.gradcam)
        torch.set_num_threads(self.per_call)
        reader.start()
        writer.start()
        try:
            self._compute()
            self.write_queue.put(None)
            writer.join()
            self._report()
        except BaseException:
            # Cancelled (Ctrl-C, a progress callback) or failed: the input being written is finished
            # and recorded, those in flight are dropped whole, so no output is left half-made.
            self.stopping.set()
            self.read_queue.clear()
            self.write_queue.clear()
            self.write_queue.put(None)
            writer.join()
            raise
        finally:
            torch.set_num_threads(threads)
            self.stopping.set()
            self.read_queue.clear()
            reader.join()
            if self.unsaved and self.error is None:
                self.save()
        return self.outcomes

    def _reader(self) -> None:
        try:
            for path in self.inputs:
                if self.stopping.is_set():
                    return
                self.read_queue.put(self.read(path))
        except BaseException as error:  # a bug, not a bad input (those become error rows): stop the run
            self.error = error
        self.read_queue.put(None)

    def _writer(self) -> None:
        last_save = time.monotonic()
        while (item := self.write_queue.get()) is not None:
            if self.stopping.is_set() and item.prepared is not None:
                item.prepared.discard()  # dropped whole: a streamed clip's files too
                continue
            try:
                self.write(item)
                self.unsaved = True
                # The tables are rewritten when the writer has caught up, or at least each second.
                if self.write_queue.empty() or time.monotonic() - last_save >= 1.0:
                    self.save()
                    self.unsaved, last_save = False, time.monotonic()
            except BaseException as error:
                self.error = error
                self.stopping.set()
                self.write_queue.clear()
                return
            self.written.append(item.outcome)

    def _compute(self) -> None:
        """Gather frames across inputs, ``batch_size`` per network call; hand finished inputs on in order.

        Up to ``self.calls`` calls of single-frame inputs run at once (in worker threads); a call
        holding part of a clip runs alone, in this thread, on all the threads. Progress is reported
        in this thread, in call order.
        """
        waiting: deque[_Input] = deque()  # read, in input order, not yet handed to the writer
        parts: list[tuple[_Input, int, int]] = []
        size = self.predictor.batch_size
        running: deque[tuple[Future[None], list[_Input]]] = deque()  # calls in flight, oldest first
        busy: Counter[_Input] = Counter()  # input -> its calls in flight
        pool = ThreadPoolExecutor(self.calls, thread_name_prefix="mffmt-predict-network") if self.calls > 1 else None

        def finish_oldest() -> None:
            future, items = running.popleft()
            future.result()
            for item in items:
                busy[item] -= 1
                if not busy[item]:
                    del busy[item]  # finished inputs are not kept alive here
            for item in items:
                if self.frames_progress is not None:
                    self.frames_progress(str(item.path), item.prepared.frames_done, item.prepared.stack.num_frames)

        def run_parts() -> None:
            items = list(dict.fromkeys(item for item, _, _ in parts))
            call = [(item.prepared, start, stop) for item, start, stop in parts]
            # A clip's frames fill several calls, which must run one after another (its maps and
            # features are filled in order): one call on all the threads, the others finished first.
            clip = any(stop - start < item.frames for item, start, stop in parts)
            parts.clear()
            if pool is None:
                self.predictor.run_network(call)
                future = _done()
            elif clip:
                while running:
                    finish_oldest()
                torch.set_num_threads(self.threads)
                try:
                    self.predictor.run_network(call)
                finally:
                    torch.set_num_threads(self.per_call)  # the worker calls' threads again
                future = _done()
            else:
                while len(running) >= self.calls:
                    finish_oldest()
                future = pool.submit(self.predictor.run_network, call)
            busy.update(items)
            running.append((future, items))
            while running and running[0][0].done():
                finish_oldest()

        def hand_on() -> None:
            while waiting and (waiting[0].prepared is None
                               or (waiting[0].prepared.complete and not busy[waiting[0]])):
                self.write_queue.put(waiting.popleft())
            self._report()

        try:
            while (item := self.read_queue.get()) is not None:
                waiting.append(item)
                count = item.frames
                start = 0
                while start < count:
                    stop = min(count, start + size - sum(b - a for _, a, b in parts))
                    parts.append((item, start, stop))
                    start = stop
                    if sum(b - a for _, a, b in parts) == size:
                        run_parts()
                        hand_on()
                hand_on()
            if parts:
                run_parts()
            while running:
                finish_oldest()
            hand_on()
        finally:
            if pool is not None:
                pool.shutdown(wait=True)  # no call goes on writing maps after a stop
        if self.error is not None:
            raise self.error

    def _report(self) -> None:
        """Report the inputs the writer recorded since the last call (in this thread); raise its error."""
        if self.error is not None:
            raise self.error
        while self.written:
            outcome = self.written.popleft()
            self.outcomes.append(outcome)
            if self.progress is not None:
                self.progress(outcome, len(self.outcomes), len(self.inputs))


def _write_one(
    predictor: Predictor, item: _Input, output: Path, outputs: list[str]
) -> tuple[InputOutcome, dict[str, Any], list[dict[str, Any]]]:
    """The result of an input through the network, its files and rows; a failure becomes an error row."""
    key = str(item.path)
    try:
        result = predictor.result(item.prepared)
        written = {name: str(file) for name, file in write_outputs(result, output, item.stem, outputs).items()}
        if "dicom" in outputs:
            written.update({name: str(file) for name, file in export_dicom_results(result, output, item.stem).items()})
    except Exception as error:  # one bad input must not stop the batch: its error is reported instead
        return _failed(item.path, item.stem, item.started, error)
    outcome = InputOutcome(key, item.stem, "done", outputs=written, seconds=time.perf_counter() - item.started)
    summary = result.to_json()
    entry = {
        "input": key,
        "stem": item.stem,
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
    return outcome, entry, frame_rows(result, key)


def _failed(
    path: Path, stem: str, started: float, error: BaseException
) -> tuple[InputOutcome, dict[str, Any], list[dict[str, Any]]]:
    """The outcome, entry and error row of an input that failed with ``error``."""
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
    return outcome, {"input": key, "stem": stem, "status": "failed", "error": message}, [error_row(key, message)]
