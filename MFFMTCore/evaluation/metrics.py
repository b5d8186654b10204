"""Classification and segmentation metrics, with malignant as the positive class.

Conventions, used by ``mffmt train`` (validation), ``mffmt evaluate`` and the model card:

- Class labels are 0 = benign, 1 = malignant; a label of -1 (e.g. a BUSI "normal" image) has no
  class and is left out of every classification metric.
- A metric whose denominator is zero (e.g. sensitivity without malignant cases, AUC with one class)
  is ``nan``; :func:`MFFMTCore.base.jsonsafe.json_safe` turns it into ``null`` for JSON files.
- Dice of one image is ``2|P & T| / (|P| + |T|)``; when the ground truth and the prediction are both
  empty it is defined as 1.0 (nothing to find, nothing found). The reported ``dice`` is the mean over
  images whose ground truth holds a lesion, comparable with published figures; images without a
  lesion (BUSI "normal") are summarised separately by the ``false_lesion_rate``: the fraction of them
  on which the model predicts any lesion pixel. ``dice_all`` averages over every image with a mask.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def confusion_matrix(labels: Sequence[int], predictions: Sequence[int]) -> np.ndarray:
    """2x2 confusion matrix ``[[TN, FP], [FN, TP]]``: rows are the truth, columns the prediction.

    Args:
        labels: true classes (0 benign, 1 malignant); entries of -1 are ignored.
        predictions: predicted classes (0 or 1), aligned with ``labels``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    predictions = np.asarray(predictions, dtype=np.int64)
    keep = labels >= 0
    matrix = np.zeros((2, 2), dtype=np.int64)
    np.add.at(matrix, (labels[keep], predictions[keep]), 1)
    return matrix


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values``; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    # Start index of every run of equal values in sorted order.
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
    ends = np.r_[starts[1:], len(values)]
    run_ranks = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat(run_ranks, ends - starts)
    return ranks


def _labelled(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Labels and scores of the cases with a class, and the numbers of malignant and benign cases."""
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    keep = labels >= 0
    labels, scores = labels[keep], scores[keep]
    return labels, scores, int((labels == 1).sum()), int((labels == 0).sum())


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic.

    It equals the probability that a random malignant case scores higher than a random benign one,
    ties counting one half. Entries with label -1 are ignored.

    Returns:
        The AUC, or ``nan`` when either class is absent.
    """
    labels, scores, positives, negatives = _labelled(labels, scores)
    if positives == 0 or negatives == 0:
        return math.nan
    ranks = _average_ranks(scores)
    u_statistic = ranks[labels == 1].sum() - positives * (positives + 1) / 2.0
    return float(u_statistic / (positives * negatives))


def roc_curve(labels: Sequence[int], scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve points, one per distinct score, from (0, 0) to (1, 1).

    A case is called malignant when its score is >= the threshold. Tied scores move the curve
    diagonally, so the trapezoidal area under these points equals :func:`roc_auc`.

    Returns:
        (false positive rates, true positive rates, thresholds); the first threshold is ``inf``.
        Empty arrays when either class is absent.
    """
    labels, scores, positives, negatives = _labelled(labels, scores)
    if positives == 0 or negatives == 0:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    true_positives = np.cumsum(labels == 1)[last_of_run]
    false_positives = np.cumsum(labels == 0)[last_of_run]
    fpr = np.r_[0.0, false_positives / negatives]
    tpr = np.r_[0.0, true_positives / positives]
    thresholds = np.r_[np.inf, scores[last_of_run]]
    return fpr, tpr, thresholds


def classification_metrics(labels: Sequence[int], scores: Sequence[float], threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy, precision, sensitivity, specificity, F1 and AUC with malignant positive.

    Args:
        labels: true classes (0 benign, 1 malignant, -1 ignored).
        scores: probability of malignancy per case.
        threshold: a case is called malignant when its score is >= threshold.

    Returns:
        A dict with the metrics (``nan`` where undefined), ``n`` (cases with a class), ``n_malignant``,
        and ``confusion_matrix`` as nested lists ``[[TN, FP], [FN, TP]]``.
    """
    labels = np.asarray(labels, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float64)
    predictions = (scores >= threshold).astype(np.int64)
    (tn, fp), (fn, tp) = confusion_matrix(labels, predictions)
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    return {
        "n": int(tn + fp + fn + tp),
        "n_malignant": int(tp + fn),
        "accuracy": _ratio(tp + tn, tn + fp + fn + tp),
        "precision": precision,
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        # F1 = 2TP / (2TP + FP + FN): defined whenever there is any positive case or call.
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "auc": roc_auc(labels, scores),
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def dice_score(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice overlap of two binary masks; 1.0 when both are empty (see the module notes)."""
    prediction = np.asarray(prediction).astype(bool)
    truth = np.asarray(truth).astype(bool)
    total = int(prediction.sum()) + int(truth.sum())
    if total == 0:
        return 1.0
    return 2.0 * int((prediction & truth).sum()) / total


def segmentation_metrics(
    dice: Sequence[float | None], truth_empty: Sequence[bool], prediction_empty: Sequence[bool]
) -> dict[str, Any]:
    """Summaries of per-image Dice values.

    Args:
        dice: per image Dice, or None for an image without a usable mask (no mask, or a box only).
        truth_empty: per image, True when the ground truth holds no lesion pixel.
        prediction_empty: per image, True when the model predicted no lesion pixel.

    Returns:
        ``dice`` (mean over images with a lesion), ``dice_all`` (mean over every image with a mask),
        ``false_lesion_rate`` (fraction of lesion-free images with a predicted lesion), and the counts
        ``n_lesion_masks`` and ``n_empty_masks``.
    """
    lesion, everything, false_lesions = [], [], []
    for value, empty_truth, empty_prediction in zip(dice, truth_empty, prediction_empty):
        if value is None:
            continue
        everything.append(value)
        if empty_truth:
            false_lesions.append(not empty_prediction)
        else:
            lesion.append(value)
    return {
        "dice": float(np.mean(lesion)) if lesion else math.nan,
        "dice_all": float(np.mean(everything)) if everything else math.nan,
        "false_lesion_rate": float(np.mean(false_lesions)) if false_lesions else math.nan,
        "n_lesion_masks": len(lesion),
        "n_empty_masks": len(false_lesions),
    }


def summarise(rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """Classification and segmentation metrics of a set of per-image rows.

    Args:
        rows: dicts with ``label`` (0/1/-1), ``p_malignant``, ``dice`` (float or None),
            ``truth_empty`` and ``prediction_empty`` (bools); optionally ``<head>_label`` and
            ``<head>_prediction`` of an auxiliary head, summarised as ``<head>_accuracy``.
        threshold: probability threshold for calling a case malignant.
    """
    metrics = {"images": len(rows)}
    metrics.update(classification_metrics([r["label"] for r in rows], [r["p_malignant"] for r in rows], threshold))
    metrics.update(
        segmentation_metrics(
            [r["dice"] for r in rows], [r["truth_empty"] for r in rows], [r["prediction_empty"] for r in rows]
        )
    )
    # Auxiliary heads (e.g. BI-RADS): rows carry "<name>_label" (-1 = unknown) and "<name>_prediction".
    heads = sorted({key[: -len("_label")] for row in rows for key in row if key.endswith("_label")})
    for name in heads:
        pairs = [(r[f"{name}_label"], r[f"{name}_prediction"]) for r in rows if r.get(f"{name}_label", -1) >= 0]
        metrics[f"{name}_accuracy"] = _ratio(sum(label == guess for label, guess in pairs), len(pairs))
        metrics[f"n_{name}"] = len(pairs)
    return metrics


def grouped_report(rows: Sequence[dict[str, Any]], threshold: float = 0.5) -> dict[str, Any]:
    """Metrics overall, per dataset and per scanner (where rows name one).

    Args:
        rows: per-image rows as for :func:`summarise`, plus ``dataset`` and ``scanner`` strings
            (an empty scanner means unknown and is left out of the per-scanner part).
        threshold: probability threshold for calling a case malignant.

    Returns:
        ``{"overall": {...}, "datasets": {name: {...}}, "scanners": {name: {...}}, "threshold": t}``.
    """

    def by(key: str) -> dict[str, Any]:
        names = sorted({str(row.get(key) or "") for row in rows} - {""})
        return {name: summarise([r for r in rows if r.get(key) == name], threshold) for name in names}

    return {
        "threshold": threshold,
        "overall": summarise(rows, threshold),
        "datasets": by("dataset"),
        "scanners": by("scanner"),
    }
