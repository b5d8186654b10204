"""Score a fine-tuned model against the model it started from on the same held-out patients.

Each model is judged as ``mffmt predict`` would use it: p(malignant) with its own temperature,
malignant when p >= 0.5 (its operating point), its own lesion-present rule deciding whether a frame
shows a lesion (a frame called lesion-free has an empty map for Dice). Intervals are 95% percentile
intervals over patient-level bootstrap resamples (a patient's frames are drawn together: frames of
one patient are not independent), the differences paired (the same resample for both models).
The wording and the file layout are :mod:`MFFMTCore.base.site_report`'s.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.site_report import (
    FORMAT,
    METRICS,
    VERSION,
    better_on,
    summary_text,
    warning_text,
    worse_on,
)
from MFFMTCore.evaluation.calibration import (
    calibrated_probability,
    expected_calibration_error,
    reliability_bins,
)
from MFFMTCore.evaluation.metrics import roc_auc, roc_curve
from MFFMTCore.evaluation.model_fit import FrameScore
from MFFMTCore.files import write_json_atomic

#: Bootstrap resamples of the patients.
RESAMPLES = 1000


def frame_metrics(scores: Sequence[FrameScore], temperatures: Sequence[float],
                  rules: Sequence[LesionDecision]) -> dict[str, float]:
    """The :data:`~MFFMTCore.base.site_report.METRICS` of one model's frames, each frame judged with its
    temperature and lesion rule (nan where undefined)."""
    classified = [(s, t) for s, t in zip(scores, temperatures) if s.label in (0, 1)]
    labels = np.array([s.label for s, _ in classified])
    p = calibrated_probability([s.logit for s, _ in classified], np.array([t for _, t in classified]))
    called = p >= 0.5
    dice = [s.dice_with(r) for s, r in zip(scores, rules) if s.lesion and s.dice is not None]
    free = [s.found(r) for s, r in zip(scores, rules) if s.lesion is False]

    def share(values: np.ndarray) -> float:
        return float(values.mean()) if len(values) else math.nan

    return {"auc": roc_auc(labels, p) if len(labels) else math.nan,
            "sensitivity": share(called[labels == 1]), "specificity": share(~called[labels == 0]),
            "dice": float(np.mean(dice)) if dice else math.nan,
            "lesion_free_flagged": float(np.mean(free)) if free else math.nan,
            "ece": expected_calibration_error(p, labels) if len(labels) else math.nan}


def _interval(values: list[float]) -> tuple[float | None, float | None]:
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 0.5 * len(values) or not finite:  # mostly undefined resamples: no interval
        return None, None
    return float(np.percentile(finite, 2.5)), float(np.percentile(finite, 97.5))


def site_report(parent: Sequence[FrameScore], new: Sequence[FrameScore], models: dict[str, dict[str, Any]],
                resamples: int = RESAMPLES, seed: int = 0,
                new_per_frame: tuple[list[float], list[LesionDecision]] | None = None) -> dict[str, Any]:
    """The site report (layout in :mod:`MFFMTCore.base.site_report`).

    Args:
        parent, new: the two models' scores of the same frames, in the same order.
        models: per ``"parent"`` and ``"new"``: ``model`` (path), ``sha256``, ``temperature`` and
            ``lesion_decision`` (JSON) of each model.
        resamples: bootstrap resamples of the patients.
        seed: of the resampling.
        new_per_frame: per frame, the temperature and rule to judge the new model with, when its own
            were fitted on these frames (:func:`MFFMTCore.evaluation.model_fit.cross_fitted_parameters`);
            None: its stored ones.
    """
    if len(parent) != len(new) or any(a.group != b.group for a, b in zip(parent, new)):
        raise ValueError("the two models must be scored on the same frames")
    rules = {key: ([float(models[key]["temperature"])] * len(parent),
                   [LesionDecision.from_json(models[key]["lesion_decision"])] * len(parent)) for key in ("parent", "new")}
    if new_per_frame is not None:
        rules["new"] = new_per_frame
    scored = {"parent": list(parent), "new": list(new)}
    groups = sorted({s.group for s in parent})
    members = {g: [i for i, s in enumerate(parent) if s.group == g] for g in groups}
    point = {key: frame_metrics(scored[key], *rules[key]) for key in scored}
    generator = np.random.default_rng(seed)
    draws: dict[str, dict[str, list[float]]] = {key: {m: [] for m in METRICS} for key in (*scored, "difference")}
    for _ in range(resamples):
        picked = [i for g in generator.choice(groups, size=len(groups), replace=True) for i in members[g]]
        values = {key: frame_metrics([scored[key][i] for i in picked], [rules[key][0][i] for i in picked],
                                     [rules[key][1][i] for i in picked]) for key in scored}
        for m in METRICS:
            draws["parent"][m].append(values["parent"][m])
            draws["new"][m].append(values["new"][m])
            draws["difference"][m].append(values["new"][m] - values["parent"][m])

    def table(key: str, values: dict[str, float]) -> dict[str, Any]:
        return {m: dict(zip(("value", "low", "high"), (values[m], *_interval(draws[key][m])))) for m in METRICS}

    report: dict[str, Any] = {
        "format": FORMAT, "version": VERSION, "patients": len(groups), "resamples": resamples,
        "frames": {"all": len(parent), "classified": sum(s.label in (0, 1) for s in parent),
                   "lesion": sum(bool(s.lesion) for s in parent), "lesion_free": sum(s.lesion is False for s in parent)},
        **{key: {**models[key], "metrics": table(key, point[key])} for key in scored},
        "difference": table("difference", {m: point["new"][m] - point["parent"][m] for m in METRICS}),
        "curves": {key: _curves(scored[key], rules[key][0]) for key in scored},
        "new_judged_with": "cross-fitted temperature and rule" if new_per_frame is not None else "its stored values",
    }
    report = json_safe(report)
    report["worse_on"], report["better_on"] = worse_on(report), better_on(report)
    report["better"] = bool(report["better_on"]) and not report["worse_on"]
    report["warning"] = warning_text(report)
    report["summary"] = summary_text(report)
    return report


def _curves(scores: list[FrameScore], temperatures: list[float]) -> dict[str, Any]:
    classified = [(s, t) for s, t in zip(scores, temperatures) if s.label in (0, 1)]
    labels = [s.label for s, _ in classified]
    p = calibrated_probability([s.logit for s, _ in classified], np.array([t for _, t in classified]))
    fpr, tpr, _ = roc_curve(labels, p)
    return {"roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}, "reliability": reliability_bins(p, labels)}


def write_site_report(report: dict[str, Any], json_path: str | os.PathLike, picture: str | os.PathLike) -> None:
    """Write the report (strict JSON) and its picture: both ROC curves and both reliability diagrams."""
    write_json_atomic(json_path, report)
    plot_site_report(report, picture)


def plot_site_report(report: dict[str, Any], path: str | os.PathLike) -> Path:
    from MFFMTCore.evaluation.plots import plot_roc_and_reliability

    return plot_roc_and_reliability(
        {f"{key} (AUC {_fmt(report[key]['metrics']['auc']['value'])})": report["curves"][key]["roc"]
         for key in ("parent", "new")},
        {f"{key} (ECE {_fmt(report[key]['metrics']['ece']['value'])})": report["curves"][key]["reliability"]
         for key in ("parent", "new")},
        path, title=f"Site report: {report['patients']} validation patients")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
