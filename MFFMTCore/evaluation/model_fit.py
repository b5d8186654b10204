"""What a trained model needs besides its weights, fitted on frames its weights did not train on.

Every run of ``mffmt train`` ends here (through :mod:`MFFMTCore.model_completion`), and so does the
packaging of the default model (``experiments/crossval.py``, on out-of-fold frames): one path.

- **Temperature** (:func:`MFFMTCore.evaluation.calibration.fit_temperature`) on the benign and
  malignant frames.
- **Lesion-present rule** (:func:`MFFMTCore.evaluation.calibration.choose_lesion_decision`) on frames
  with a lesion (a non-empty mask, or a benign/malignant label without one) and lesion-free frames
  (label ``normal``, or an empty mask): it keeps a lesion on at least ``min_kept`` of the lesion
  frames and gives one to the fewest lesion-free frames.

Each part is fitted on all the held-out frames; the figures it is shown with are **cross-fitted**:
the held-out patients (groups) are split into up to five folds and each fold is scored with the
value fitted on the others, so a small validation set does not judge the value it chose. A part
without enough data (:data:`MIN_FRAMES` of each kind, :data:`MIN_GROUPS` patients) is not fitted:
the parent model's value is kept when there is one, and the reason is one line in the model file.
Plain numpy: these are the numbers, the frames come from the caller.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.model_metadata import FITTED, KEPT, NOT_FITTED
from MFFMTCore.evaluation.calibration import (
    calibrated_probability,
    choose_lesion_decision,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
)

#: Fewest frames of each kind a part is fitted on (benign and malignant for the temperature, with and
#: without a lesion for the lesion rule): fewer cannot tell a fitted value from noise.
MIN_FRAMES = 5
#: Fewest patients (groups): one patient's frames are one observation, not many.
MIN_GROUPS = 2
#: Folds of the cross-fitted figures.
FOLDS = 5
#: Share of lesion frames the lesion rule keeps.
MIN_KEPT = 0.95


@dataclass(frozen=True)
class FrameScore:
    """One held-out frame as a model answered it, with its truth.

    Args:
        group: the patient (or near-duplicate group) it belongs to.
        label: 0 benign, 1 malignant, -1 no class (lesion-free or unknown).
        lesion: whether the frame shows a lesion (None: unknown, e.g. a box-only or unlabelled frame).
        logit: malignant-minus-benign logit, before any temperature.
        peak: highest lesion probability of the frame's map.
        largest_fraction: area of the largest lesion region over the analysed area (0: no region).
        dice: Dice of the thresholded map against the mask, before the lesion rule (None: no mask).
    """

    group: str
    label: int
    lesion: bool | None
    logit: float
    peak: float
    largest_fraction: float
    dice: float | None = None

    def found(self, rule: LesionDecision) -> bool:
        return rule.present(self.peak, self.largest_fraction)

    def dice_with(self, rule: LesionDecision) -> float | None:
        """Dice after ``rule``: a frame it calls lesion-free has an empty map."""
        if self.dice is None or self.found(rule):
            return self.dice
        return 0.0 if self.lesion else 1.0


def frame_scores_from_rows(rows: Sequence[dict[str, Any]], analysed_px: int,
                           group: Callable[[dict[str, Any]], str]) -> list[FrameScore]:
    """:class:`FrameScore` of rows of :func:`MFFMTCore.evaluation.predictions.predict_rows` (maps at the
    network's input size, ``analysed_px`` pixels); ``group`` names a row's patient."""
    scores = []
    for row in rows:
        truth = row.get("truth_px")
        lesion = None if truth is None else truth > 0
        scores.append(FrameScore(group(row), int(row["label"]), lesion, float(row["logit"]), float(row["p_lesion"]),
                                 row["largest_px"] / analysed_px, row.get("dice")))
    return scores


@dataclass
class PartFit:
    """One fitted part: the value to store and how it came about.

    Args:
        status: :data:`~MFFMTCore.base.model_metadata.FITTED`, ``KEPT`` (the parent's) or ``NOT_FITTED``.
        value: the temperature (float) or the rule (JSON dict); None when not fitted and no parent.
        message: one line for the run's output and the model file.
        figures: what the value was chosen on and how it scores (cross-fitted).
    """

    status: str
    value: Any
    message: str
    figures: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"status": self.status, "value": self.value, "message": self.message, "figures": self.figures}


def group_folds(groups: Sequence[str], folds: int = FOLDS) -> np.ndarray:
    """A fold number per frame: patients spread over ``min(folds, patients)`` folds by a hash of their
    name (stable across runs and machines)."""
    names = sorted(set(groups))
    count = max(1, min(folds, len(names)))
    order = sorted(names, key=lambda name: hashlib.sha256(name.encode()).hexdigest())
    fold_of = {name: index % count for index, name in enumerate(order)}
    return np.array([fold_of[name] for name in groups], dtype=int)


def _not_fitted(part: str, reason: str, parent: Any) -> PartFit:
    if parent is not None:
        return PartFit(KEPT, parent, f"{part}: {reason}; the parent model's value {parent} is kept")
    return PartFit(NOT_FITTED, None, f"{part}: {reason}; the model has none (uncalibrated)")


def _cross_fitted(scores: list[FrameScore], fit: Callable[[list[FrameScore]], Any]) -> list[Any | None]:
    """Per frame, the value ``fit`` gives on the other folds' frames (None where they cannot fit one)."""
    folds = group_folds([score.group for score in scores])
    values: list[Any | None] = [None] * len(scores)
    for fold in sorted(set(folds.tolist())):
        try:
            value = fit([score for score, f in zip(scores, folds) if f != fold])
        except ValueError:
            continue
        for index in np.flatnonzero(folds == fold):
            values[index] = value
    return values


def _fit_temperature(scores: list[FrameScore]) -> float:
    classified = [s for s in scores if s.label in (0, 1)]
    return fit_temperature([s.logit for s in classified], [s.label for s in classified])


def _fit_rule(scores: list[FrameScore], min_kept: float = MIN_KEPT) -> LesionDecision:
    known = [s for s in scores if s.lesion is not None]
    return choose_lesion_decision([s.peak for s in known], [s.largest_fraction for s in known],
                                  [bool(s.lesion) for s in known], min_kept)


def cross_fitted_parameters(scores: Sequence[FrameScore], parts: dict[str, PartFit], min_kept: float = MIN_KEPT
                            ) -> tuple[list[float], list[LesionDecision]]:
    """Per frame, the temperature and lesion rule to judge it with when ``parts`` were fitted on these
    same frames: those fitted on the other folds (where a fold cannot be fitted, and for a part that
    was not fitted here, the stored value). Scores of the stored values would flatter the model."""
    scores = list(scores)
    stored_t = parts["temperature"].value if parts["temperature"].value is not None else 1.0
    stored_r = LesionDecision.from_json(parts["lesion_decision"].value)
    temperatures = [stored_t] * len(scores)
    rules = [stored_r] * len(scores)
    if parts["temperature"].status == FITTED:
        temperatures = [t if t is not None else stored_t for t in _cross_fitted(scores, _fit_temperature)]
    if parts["lesion_decision"].status == FITTED:
        rules = [r if r is not None else stored_r
                 for r in _cross_fitted(scores, lambda part: _fit_rule(part, min_kept))]
    return temperatures, rules


def fit_temperature_part(scores: Sequence[FrameScore], parent: float | None = None) -> PartFit:
    """The temperature on the benign and malignant frames; ECE before (T = 1) and cross-fitted after.

    Args:
        scores: held-out frames.
        parent: the parent model's temperature (fine-tuning), kept when this data cannot fit one.
    """
    classified = [score for score in scores if score.label in (0, 1)]
    counts = {name: sum(score.label == index for score in classified) for index, name in ((0, "benign"), (1, "malignant"))}
    groups = len({score.group for score in classified})
    base = {"frames": counts, "patients": groups}
    if min(counts.values()) < MIN_FRAMES or groups < MIN_GROUPS:
        reason = (f"{counts['benign']} benign and {counts['malignant']} malignant held-out frame(s) of {groups} "
                  f"patient group(s); at least {MIN_FRAMES} of each class from {MIN_GROUPS} patients are needed")
        result = _not_fitted("temperature", reason, parent)
        result.figures = base
        return result

    temperature = round(_fit_temperature(classified), 4)
    logits, labels = [s.logit for s in classified], [s.label for s in classified]
    paired = [(s, t) for s, t in zip(scores, _cross_fitted(list(scores), _fit_temperature))
              if t is not None and s.label in (0, 1)]
    crossed = [float(calibrated_probability([s.logit], t)[0]) for s, t in paired]
    crossed_labels = [s.label for s, _ in paired]
    figures = {**base, "ece_before": expected_calibration_error(calibrated_probability(logits), labels),
               "ece_cross_fitted": expected_calibration_error(crossed, crossed_labels) if paired else None,
               "cross_fitted_frames": len(paired),
               "bins_before": reliability_bins(calibrated_probability(logits), labels),
               "bins_cross_fitted": reliability_bins(crossed, crossed_labels)}
    message = (f"temperature {temperature:g} fitted on {len(classified)} held-out frames of {groups} patient "
               f"groups (ECE {_text(figures['ece_before'])} at T = 1, {_text(figures['ece_cross_fitted'])} cross-fitted)")
    return PartFit(FITTED, temperature, message, json_safe(figures))


def fit_lesion_rule_part(scores: Sequence[FrameScore], parent: dict[str, float] | None = None,
                         min_kept: float = MIN_KEPT) -> PartFit:
    """The lesion-present rule on frames with and without a lesion; figures before (any lesion pixel)
    and cross-fitted after.

    Args:
        scores: held-out frames.
        parent: the parent model's rule (JSON), kept when this data cannot fit one.
        min_kept: share of lesion frames the rule must keep.
    """
    known = [score for score in scores if score.lesion is not None]
    lesion = sum(score.lesion for score in known)
    free = len(known) - lesion
    groups = len({score.group for score in known})
    base = {"lesion_frames": lesion, "lesion_free_frames": free, "patients": groups, "min_kept": min_kept}
    if min(lesion, free) < MIN_FRAMES or groups < MIN_GROUPS:
        reason = (f"{lesion} held-out frame(s) with a lesion and {free} lesion-free of {groups} patient group(s); "
                  f"at least {MIN_FRAMES} of each from {MIN_GROUPS} patients are needed")
        result = _not_fitted("lesion-present rule", reason, parent)
        result.figures = base
        return result

    def fit(part: list[FrameScore]) -> LesionDecision:
        return _fit_rule(part, min_kept)

    chosen = fit(known)
    rule = {key: round(value, 4) for key, value in chosen.to_json().items()}
    any_pixel = LesionDecision()
    paired = [(s, r) for s, r in zip(scores, _cross_fitted(list(scores), fit)) if r is not None and s.lesion is not None]

    def rates(pairs: list[tuple[FrameScore, LesionDecision]]) -> dict[str, float | None]:
        kept = [s.found(r) for s, r in pairs if s.lesion]
        flagged = [s.found(r) for s, r in pairs if not s.lesion]
        return {"lesion_frames_kept": float(np.mean(kept)) if kept else None,
                "lesion_free_flagged": float(np.mean(flagged)) if flagged else None}

    figures = {**base, "before": rates([(s, any_pixel) for s in known]), "cross_fitted": rates(paired),
               "cross_fitted_frames": len(paired)}
    crossed = figures["cross_fitted"]
    message = (f"lesion-present rule peak >= {rule['min_peak']:g}, area >= {rule['min_area_fraction']:g} fitted on "
               f"{lesion} lesion and {free} lesion-free held-out frames of {groups} patient groups (cross-fitted: "
               f"keeps {_text(crossed['lesion_frames_kept'])} of lesion frames, flags {_text(crossed['lesion_free_flagged'])} "
               f"of lesion-free ones; any lesion pixel flagged {_text(figures['before']['lesion_free_flagged'])})")
    return PartFit(FITTED, rule, message, json_safe(figures))


def fit_calibration(scores: Sequence[FrameScore], parent_temperature: float | None = None,
                    parent_rule: dict[str, float] | None = None, min_kept: float = MIN_KEPT) -> dict[str, PartFit]:
    """Temperature and lesion-present rule of a model from its held-out frames (see the module notes)."""
    scores = list(scores)
    return {"temperature": fit_temperature_part(scores, parent_temperature),
            "lesion_decision": fit_lesion_rule_part(scores, parent_rule, min_kept)}


def _text(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.3f}"
