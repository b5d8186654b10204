"""Pictures of evaluation and training results: ROC curve, confusion matrix, training curves.

Matplotlib's non-interactive Agg backend is used so that the pictures render without a display,
and every PNG is written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # before pyplot is imported

import matplotlib.pyplot as plt
import numpy as np

from MFFMTCore.evaluation.metrics import roc_auc, roc_curve
from MFFMTCore.files import atomic_path


def _save(figure: plt.Figure, path: str | os.PathLike) -> Path:
    path = Path(path)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path


def plot_roc(
    curves: dict[str, tuple[Sequence[int], Sequence[float]]], path: str | os.PathLike, title: str = "ROC curve"
) -> Path:
    """Draw one ROC curve per named set of (labels, malignancy scores) into a PNG.

    Args:
        curves: name -> (labels with 1 = malignant, scores); sets lacking a class are listed as
            "AUC undefined" and drawn as nothing.
        path: PNG to write.
        title: figure title.
    """
    figure, axes = plt.subplots(figsize=(5, 5))
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, (labels, scores) in curves.items():
        fpr, tpr, _ = roc_curve(labels, scores)
        auc = roc_auc(labels, scores)
        label = f"{name} (AUC {auc:.3f})" if math.isfinite(auc) else f"{name} (AUC undefined)"
        axes.plot(fpr, tpr, linewidth=1.5, label=label)
    axes.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)", title=title)
    axes.set_aspect("equal")
    axes.legend(loc="lower right", fontsize="small")
    return _save(figure, path)


def plot_confusion_matrix(
    matrix: Sequence[Sequence[int]], path: str | os.PathLike, class_names: Sequence[str] = ("benign", "malignant"),
    title: str = "Confusion matrix",
) -> Path:
    """Draw a confusion matrix (rows: truth, columns: prediction) with counts and row percentages."""
    matrix = np.asarray(matrix, dtype=np.int64)
    totals = matrix.sum(axis=1, keepdims=True)
    fractions = np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)
    figure, axes = plt.subplots(figsize=(4.2, 3.8))
    axes.imshow(fractions, cmap="Blues", vmin=0, vmax=1)
    for row in range(matrix.shape[0]):
        for column in range(matrix.shape[1]):
            colour = "white" if fractions[row, column] > 0.6 else "black"
            axes.text(column, row, f"{matrix[row, column]}\n{100 * fractions[row, column]:.0f}%",
                      ha="center", va="center", color=colour)
    ticks = range(len(class_names))
    axes.set_xticks(ticks, class_names)
    axes.set_yticks(ticks, class_names)
    axes.set(xlabel="predicted", ylabel="true", title=title)
    return _save(figure, path)


def plot_training_curves(history: Sequence[dict[str, Any]], path: str | os.PathLike) -> Path:
    """Draw losses and validation metrics per epoch from a training history.

    Args:
        history: one dict per epoch with ``epoch`` and any of ``loss``, ``loss_cls``, ``loss_loc``,
            ``loss_seg``, ``val_loss``, ``val_auc``, ``val_dice``, ``val_accuracy``.
        path: PNG to write.
    """
    figure, (losses, scores) = plt.subplots(1, 2, figsize=(10, 4))

    def draw(axes: plt.Axes, key: str, label: str) -> None:
        points = [(h["epoch"], h[key]) for h in history if h.get(key) is not None and math.isfinite(h[key])]
        if points:
            epochs, values = zip(*points)
            axes.plot(epochs, values, marker="o" if len(points) < 30 else None, markersize=3, label=label)

    for key, label in (("loss", "train total"), ("loss_cls", "train L_cls"), ("loss_loc", "train L_loc"),
                       ("loss_seg", "train L_seg"), ("val_loss", "validation total")):
        draw(losses, key, label)
    for key, label in (("val_auc", "validation AUC"), ("val_dice", "validation Dice"),
                       ("val_accuracy", "validation accuracy")):
        draw(scores, key, label)
    losses.set(xlabel="epoch", ylabel="loss", title="Losses")
    scores.set(xlabel="epoch", ylim=(0, 1), title="Validation")
    for axes in (losses, scores):
        axes.grid(alpha=0.3)
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize="small")
    return _save(figure, path)


def _draw_reliability(axes: plt.Axes, curves: dict[str, Sequence[dict[str, Any]]], title: str) -> None:
    axes.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1, label="perfect calibration")
    for name, bins in curves.items():
        points = [(b["mean_probability"], b["observed"]) for b in bins if b["cases"]]
        if points:
            axes.plot(*zip(*points), marker="o", markersize=4, linewidth=1.5, label=name)
    axes.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean p(malignant) in bin", ylabel="observed malignant share",
             title=title)
    axes.set_aspect("equal")
    axes.grid(alpha=0.3)
    axes.legend(loc="upper left", fontsize="small")


def plot_reliability(curves: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike,
                     title: str = "Reliability of p(malignant)") -> Path:
    """Draw reliability diagrams: observed malignant share against mean p(malignant) per bin.

    Args:
        curves: name -> bins as :func:`MFFMTCore.evaluation.calibration.reliability_bins` gives them
            (empty bins are skipped); a perfectly calibrated model lies on the diagonal.
        path: PNG to write.
        title: figure title.
    """
    figure, axes = plt.subplots(figsize=(5, 5))
    _draw_reliability(axes, curves, title)
    return _save(figure, path)


def plot_roc_and_reliability(rocs: dict[str, dict[str, Sequence[float]]],
                             reliabilities: dict[str, Sequence[dict[str, Any]]], path: str | os.PathLike,
                             title: str) -> Path:
    """ROC curves (left) and reliability diagrams (right) of several models side by side.

    Args:
        rocs: name -> ``{"fpr": [...], "tpr": [...]}`` (:func:`MFFMTCore.evaluation.metrics.roc_curve`).
        reliabilities: name -> reliability bins (as for :func:`plot_reliability`).
        path: PNG to write.
        title: figure title.
    """
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5))
    left.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    for name, curve in rocs.items():
        left.plot(curve["fpr"], curve["tpr"], linewidth=1.5, label=name)
    left.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="1 - specificity (false positive rate)",
             ylabel="sensitivity (true positive rate)", title="ROC curve")
    left.set_aspect("equal")
    left.legend(loc="lower right", fontsize="small")
    _draw_reliability(right, reliabilities, "Reliability of p(malignant)")
    figure.suptitle(title)
    return _save(figure, path)


def plot_lesion_tradeoff(curves: dict[str, dict[str, Sequence[float]]], path: str | os.PathLike,
                         marks: dict[str, tuple[float, float]] | None = None,
                         title: str = "Lesion rule: lesion frames kept against lesion-free frames given a lesion") -> Path:
    """The trade-off of the frame-level lesion rule, one curve per model.

    Args:
        curves: name -> ``{"flagged": [...], "kept": [...]}``
            (:func:`MFFMTCore.evaluation.calibration.lesion_tradeoff`), drawn as steps.
        path: PNG to write.
        marks: name -> (flagged, kept) of a model's own stored rule, drawn as a point on its curve's colour.
        title: figure title.
    """
    figure, axes = plt.subplots(figsize=(6.5, 5))
    for name, curve in curves.items():
        (line,) = axes.step(curve["flagged"], curve["kept"], where="post", linewidth=1.5, label=name)
        if marks and name in marks:
            axes.plot(*marks[name], marker="o", markersize=7, color=line.get_color(), linestyle="none")
    axes.axvline(0.10, linestyle=":", color="grey", linewidth=1)
    axes.axhline(0.97, linestyle=":", color="grey", linewidth=1)
    axes.set(xlim=(-0.01, 1.01), ylim=(0, 1.01), xlabel="lesion-free frames given a lesion",
             ylabel="lesion frames keeping a lesion", title=title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right", fontsize="small", title="dots: each model's own rule; dotted: the goal")
    return _save(figure, path)
