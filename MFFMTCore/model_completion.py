"""The last step of every training run: make the best model complete and calibrated.

``mffmt train`` calls :func:`complete_run` when its epochs are done (before its "done" event), so a
model file from ``mffmt train`` (and from Slicer's Retrain, which runs it) carries:

- a **temperature** and a **lesion-present rule** fitted on the run's validation patients, frames
  the weights did not train on (:mod:`MFFMTCore.evaluation.model_fit`: cross-fitted figures, too
  little data -> the parent model's value is kept, and the file says why);
- the **input-check statistics** (:class:`~MFFMTCore.inference.input_check.FeatureStatistics`):
  the reference is the training frames' features (up to :data:`MAX_REFERENCE_FRAMES`, spread
  evenly), the limit the 99.5% quantile of the validation frames' distances to it (frames the
  reference does not hold, as a new patient's will be);
- ``fitted``: per part its status, a one-line message and the figures, under the file's checksum.

The frames are scored through :class:`~MFFMTCore.inference.predictor.Predictor` on the image
files, exactly as ``mffmt predict`` sees them (imaging region, input size, lesion map at the
frame's resolution), with the temperature at 1 and no lesion rule, so that the fit sees the raw
network. When the run started from a model (``--init-model``), the parent is scored on the same
patients and the site report is written (:mod:`MFFMTCore.evaluation.site_report`), the new model
judged with its temperature and rule cross-fitted over those patients (fitted on the other folds).
This takes minutes on a CPU, so :func:`complete_run` tells its progress (:class:`CompletionProgress`):
``mffmt train`` shows it as a bar and as ``progress`` events in ``RUN_DIR/progress.jsonl``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.model_metadata import FITTED, NOT_FITTED, calibrated_parts, calibration_note
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.base.spread import evenly
from MFFMTCore.data.records import SampleRecord, label_index
from MFFMTCore.errors import MFFMTError
from MFFMTCore.evaluation.metrics import dice_score
from MFFMTCore.evaluation.model_fit import FrameScore, PartFit, cross_fitted_parameters, fit_calibration
from MFFMTCore.evaluation.site_report import site_report, write_site_report
from MFFMTCore.files import read_mask
from MFFMTCore.inference.input_check import METADATA_KEY, FeatureRecorder, FeatureStatistics
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.model_file import load_model, read_model_checksum, read_model_info, save_model

#: Training frames whose features are the input check's reference (more costs time and file size).
MAX_REFERENCE_FRAMES = 200
#: Fewest validation frames the input check's limit is fitted on.
MIN_INPUT_CHECK_FRAMES = 20
#: Nearest neighbour whose distance is a frame's distance, and the quantile that becomes the limit.
NEIGHBOURS, QUANTILE = 20, 0.995


@dataclass
class Scored:
    """Frames of some records as one model answered them.

    Args:
        scores: one per frame, raw (temperature 1, no lesion rule).
        features: (n, D) feature vectors of the frames (input check), or None when not asked for.
        failed: one line per record that could not be scored (the others are kept).
    """

    scores: list[FrameScore]
    features: np.ndarray | None
    failed: list[str]


def _truth(record: SampleRecord) -> tuple[bool | None, np.ndarray | None]:
    """(whether the record shows a lesion, its mask or None)."""
    if record.masks:
        mask = read_mask(record.masks)
        return bool(mask.any()), mask
    if record.label == "normal":
        return False, None
    if record.label in ("benign", "malignant"):
        return True, None  # a lesion without a drawn outline (a box at most): no Dice
    return None, None


def score_records(predictor: Predictor, records: Sequence[SampleRecord], features: bool = False,
                  progress: Callable[[], None] | None = None) -> Scored:
    """Score every record's frames with ``predictor`` as it stands, raw (see the module notes).

    Args:
        predictor: the model; its temperature, lesion rule and input statistics are set aside here.
        records: the frames' records.
        features: also record the input check's feature vector of each frame.
        progress: called after each record.
    """
    saved = predictor.temperature, predictor.lesion_decision, predictor.input_statistics
    predictor.temperature, predictor.lesion_decision, predictor.input_statistics = 1.0, LesionDecision(), None
    scores: list[FrameScore] = []
    vectors: list[np.ndarray] = []
    failed: list[str] = []
    try:
        for record in records:
            try:
                lesion, mask = _truth(record)
                with FeatureRecorder(predictor.model) as recorder:
                    result = predictor.predict(record.image)
                taken = recorder.take() if features else None
            except MFFMTError as error:  # one unreadable file must not lose the others
                failed.append(str(error))
                continue
            for index, frame in enumerate(result.frames):
                p = np.clip(result.class_probabilities[index].astype(np.float64), 1e-38, 1.0)
                largest = frame.components[0].area_px / result.analysed_px if frame.components else 0.0
                usable = mask is not None and mask.shape == result.label[index].shape
                dice = dice_score(result.label[index], mask) if usable else None
                scores.append(FrameScore(record.group_key(), label_index(record.label), lesion,
                                         float(np.log(p[1]) - np.log(p[0])), float(frame.p_lesion), largest, dice))
            if taken is not None:
                vectors.append(taken)
            if progress is not None:
                progress()
    finally:
        predictor.temperature, predictor.lesion_decision, predictor.input_statistics = saved
    stacked = np.concatenate(vectors) if vectors else None
    return Scored(scores, stacked if features else None, failed)


def spread_evenly(records: list[SampleRecord], limit: int | None) -> list[SampleRecord]:
    """At most ``limit`` of ``records``, spread evenly over the list (all when ``limit`` is None)."""
    return [records[index] for index in evenly(len(records), limit)]


def fit_input_check(predictor: Predictor, train: list[SampleRecord], held_out: Scored,
                    progress: Callable[[], None] | None = None) -> tuple[PartFit, str | None]:
    """The input-check statistics: reference from the training frames, limit from the held-out ones.

    Args:
        progress: called after each reference record scored.

    Returns:
        (the part's record, the statistics as the model file stores them, or None when not fitted).
    """
    frames = 0 if held_out.features is None else len(held_out.features)
    reference_records = spread_evenly(train, MAX_REFERENCE_FRAMES)
    if frames < MIN_INPUT_CHECK_FRAMES or len(reference_records) <= 2 * NEIGHBOURS:
        return PartFit(NOT_FITTED, None, f"input-check statistics: {len(train)} training and {frames} validation "
                                         f"frame(s); more than {2 * NEIGHBOURS} training and at least "
                                         f"{MIN_INPUT_CHECK_FRAMES} validation frames are needed; the model has "
                                         "the colour check only (a parent's statistics describe its own features, "
                                         "not these)", {"train_frames": len(train), "validation_frames": frames}), None
    reference = score_records(predictor, reference_records, features=True, progress=progress).features
    if reference is None or len(reference) <= 2 * NEIGHBOURS:
        return PartFit(NOT_FITTED, None, "input-check statistics: the training frames could not be read", {}), None
    statistics = FeatureStatistics.fit(reference, neighbours=NEIGHBOURS, quantile=QUANTILE)
    statistics.limit = max(float(np.quantile(statistics.raw_distance(held_out.features), QUANTILE)), 1e-6)
    statistics.fitted.update({"limit_from": "validation frames", "validation_frames": frames})
    figures = {"reference_frames": len(reference), "validation_frames": frames, "limit": statistics.limit,
               "neighbours": NEIGHBOURS, "quantile": QUANTILE}
    message = (f"input-check statistics from {len(reference)} training frames, limit at the {QUANTILE:.1%} quantile "
               f"of {frames} validation frames' distances")
    return PartFit(FITTED, None, message, figures), statistics.to_json()


class CompletionProgress:
    """Where the completion stands, in frames scored (the slow part; each fit counts one unit).

    Each stage announces the units it will take; a stage that ends early (a part that is not fitted)
    leaves its units to be counted done when the next stage begins, so the count never runs backwards.

    Args:
        report: called with (units done, units in all, what is being done) at every change; None: no
            one is told (the completion's own calls stay the same).
        train: the run's training records (the input check's reference is drawn from them).
        held_out: the validation records.
        parent: whether the run started from a model (its scoring and the site report count too).
    """

    def __init__(self, report: Callable[[int, int, str], None] | None, train: Sequence[SampleRecord],
                 held_out: Sequence[SampleRecord], parent: bool) -> None:
        self.report = report
        reference = min(len(train), MAX_REFERENCE_FRAMES)
        self.total = len(held_out) + 1 + reference + (len(held_out) + 1 if parent else 0)
        self.done = self._end = 0
        self.message = ""

    def stage(self, message: str, units: int = 1) -> None:
        """Begin a stage of ``units`` units."""
        self.done = self._end
        self._end = min(self.done + units, self.total)
        self.message = message
        self._tell()

    def tick(self) -> None:
        """One unit of the current stage is done."""
        self.done = min(self.done + 1, self._end)
        self._tell()

    def finish(self, message: str) -> None:
        """Everything is done."""
        self.done = self._end = self.total
        self.message = message
        self._tell()

    def _tell(self) -> None:
        if self.report is not None:
            self.report(self.done, self.total, self.message)


@dataclass
class Completion:
    """What :func:`complete_model` fitted and measured.

    Args:
        parts: ``temperature``, ``lesion_decision``, ``input_check``.
        held_out: the new model's raw scores of the held-out frames.
        messages: one line per part, and per record that could not be scored.
    """

    parts: dict[str, PartFit]
    held_out: Scored
    messages: list[str]


def complete_model(model_path: str | os.PathLike, train: list[SampleRecord], held_out: list[SampleRecord],
                   parent: str | os.PathLike | None = None, device: str = "cpu",
                   echo: Callable[[str], None] = print, progress: CompletionProgress | None = None) -> Completion:
    """Fit temperature, lesion rule and input check of ``model_path`` and rewrite it with them.

    Args:
        model_path: the model file to complete (a run's own ``model.safetensors``; rewritten atomically).
        train: the records its weights trained on (the input check's reference).
        held_out: records its weights did not train on (the run's validation split).
        parent: the model it was fine-tuned from: its temperature and rule are kept for a part this
            data cannot fit (when the parent has them).
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`).
        echo: where the one-line messages go.
        progress: told of each stage and each frame scored.
    """
    progress = progress or CompletionProgress(None, train, held_out, parent is not None)
    predictor = Predictor(model_path, device=device)
    progress.stage(f"scoring {len(held_out)} validation images", len(held_out))
    scored = score_records(predictor, held_out, features=True, progress=progress.tick)
    messages = [f"validation file skipped: {line}" for line in scored.failed]
    parent_temperature = parent_rule = None
    if parent is not None:
        parent_info = read_model_info(parent)
        present = calibrated_parts(asdict(parent_info))
        parent_temperature = parent_info.temperature if present["temperature"] else None
        parent_rule = parent_info.lesion_decision if present["lesion_decision"] else None
    progress.stage("fitting the temperature and the lesion-present rule (cross-fitted figures)")
    parts = fit_calibration(scored.scores, parent_temperature, parent_rule)
    progress.stage("input-check statistics from the training images", min(len(train), MAX_REFERENCE_FRAMES))
    check, statistics = fit_input_check(predictor, train, scored, progress.tick)
    parts["input_check"] = check
    messages += [part.message for part in parts.values()]
    network, info = load_model(model_path)
    temperature, rule = parts["temperature"].value, parts["lesion_decision"].value
    info.temperature = float(temperature) if temperature is not None else 1.0
    info.lesion_decision = dict(rule) if rule is not None else {}
    info.fitted = {name: part.to_json() for name, part in parts.items()}
    save_model(model_path, network, info, entries={METADATA_KEY: statistics} if statistics else None)
    for line in messages:
        echo(line)
    return Completion(parts, scored, messages)


def compare_with_parent(parent: str | os.PathLike, model_path: str | os.PathLike, held_out: list[SampleRecord],
                        completion: Completion, folder: RunFolder, device: str = "cpu",
                        progress: CompletionProgress | None = None) -> dict[str, Any]:
    """Score ``parent`` on the same held-out records and write the site report into ``folder``; the new
    model is judged with its temperature and rule cross-fitted (they were fitted on these frames)."""
    new_scores = completion.held_out
    progress = progress or CompletionProgress(None, [], held_out, parent=True)
    progress.stage(f"scoring the parent model on the {len(held_out)} validation images", len(held_out))
    scored = score_records(Predictor(parent, device=device), held_out, progress=progress.tick)
    if len(scored.scores) != len(new_scores.scores):
        raise MFFMTError(parent, "the parent model and the new model could not read the same validation files")
    models = {}
    for key, path in (("parent", parent), ("new", model_path)):
        info = read_model_info(path)
        models[key] = {"model": str(Path(path).resolve()), "sha256": read_model_checksum(path), "name": info.name,
                       "temperature": info.temperature, "lesion_decision": info.lesion_decision,
                       "calibration": calibration_note(asdict(info))}
    progress.stage("site report: patient-level bootstrap of both models")
    report = site_report(scored.scores, new_scores.scores, models,
                         new_per_frame=cross_fitted_parameters(new_scores.scores, completion.parts))
    write_site_report(report, folder.site_report, folder.site_report_picture)
    return report


def complete_run(folder: RunFolder, train: list[SampleRecord], held_out: list[SampleRecord],
                 parent: str | os.PathLike | None, device: str = "cpu",
                 echo: Callable[[str], None] = print,
                 progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any] | None:
    """Complete a finished run's best model and, for a fine-tuning run, write its site report.

    Args:
        progress: called with (units done, units in all, what is being done) as the work goes on
            (:class:`CompletionProgress`).

    Returns:
        The site report, or None when the run did not start from a model.
    """
    steps = CompletionProgress(progress, train, held_out, parent is not None)
    completion = complete_model(folder.model, train, held_out, parent, device, echo, steps)
    report = None
    if parent is not None:
        report = compare_with_parent(parent, folder.model, held_out, completion, folder, device, steps)
    steps.finish("model completed" + (" and site report written" if report is not None else ""))
    if report is not None:
        echo(report["summary"])
        echo(f"site report: {folder.site_report} and {folder.site_report_picture}")
    return report
