"""Metrics against values computed by hand (malignant = 1 is the positive class)."""

import json
import math

import numpy as np
import pytest

from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.evaluation.metrics import (
    classification_metrics,
    confusion_matrix,
    dice_score,
    grouped_report,
    roc_auc,
    roc_curve,
    segmentation_metrics,
)


def test_confusion_matrix_ignores_unlabelled():
    labels = [0, 0, 1, 1, 1, -1]
    predictions = [0, 1, 1, 1, 0, 1]
    assert confusion_matrix(labels, predictions).tolist() == [[1, 1], [1, 2]]


def test_classification_metrics_by_hand():
    # truth:  B  B  B  B  M  M  M  (+ one unlabelled normal image)
    # scores: .1 .4 .6 .2 .9 .7 .3
    # at 0.5: TN=3 (0.1, 0.4, 0.2), FP=1 (0.6), TP=2 (0.9, 0.7), FN=1 (0.3)
    labels = [0, 0, 0, 0, 1, 1, 1, -1]
    scores = [0.1, 0.4, 0.6, 0.2, 0.9, 0.7, 0.3, 0.99]
    metrics = classification_metrics(labels, scores, threshold=0.5)
    assert metrics["confusion_matrix"] == [[3, 1], [1, 2]]
    assert metrics["n"] == 7 and metrics["n_malignant"] == 3
    assert metrics["accuracy"] == pytest.approx(5 / 7)
    assert metrics["precision"] == pytest.approx(2 / 3)
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == pytest.approx(3 / 4)
    assert metrics["f1"] == pytest.approx(2 / 3)
    # Pairs (M, B) with M scoring higher: 0.9 beats 4, 0.7 beats 4, 0.3 beats 0.1 and 0.2 -> 10 of 12.
    assert metrics["auc"] == pytest.approx(10 / 12)


def test_threshold_is_inclusive():
    metrics = classification_metrics([0, 1], [0.5, 0.5], threshold=0.5)
    assert metrics["confusion_matrix"] == [[0, 1], [0, 1]]


def test_auc_ties_count_half():
    # One tie between M(0.5) and B(0.5): pairs M>B: (0.8 > 0.5, 0.2) = 2, (0.5 > 0.2) = 1, tie 0.5 -> 3.5 of 4.
    assert roc_auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(3.5 / 4)
    # All scores equal: no information, AUC 0.5.
    assert roc_auc([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0
    assert roc_auc([0, 0, 1, 1], [0.9, 0.8, 0.2, 0.1]) == 0.0


def test_auc_undefined_with_one_class():
    assert math.isnan(roc_auc([1, 1, -1], [0.2, 0.4, 0.5]))
    metrics = classification_metrics([0, 0], [0.1, 0.7])
    assert math.isnan(metrics["auc"]) and math.isnan(metrics["sensitivity"])
    assert metrics["specificity"] == 0.5


def test_roc_curve_points_and_area_match_auc():
    labels = [1, 1, 0, 0, 1, 0]
    scores = [0.9, 0.5, 0.5, 0.2, 0.7, 0.6]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    # Distinct thresholds: inf, .9, .7, .6, .5 (one M and one B tied), .2
    assert thresholds.tolist() == [math.inf, 0.9, 0.7, 0.6, 0.5, 0.2]
    assert fpr.tolist() == pytest.approx([0, 0, 0, 1 / 3, 2 / 3, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(labels, scores))


def test_auc_matches_brute_force_pairs():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 60)
    scores = rng.integers(0, 8, 60) / 8.0  # many ties
    positives, negatives = scores[labels == 1], scores[labels == 0]
    wins = (positives[:, None] > negatives[None, :]).sum() + 0.5 * (positives[:, None] == negatives[None, :]).sum()
    assert roc_auc(labels, scores) == pytest.approx(wins / (len(positives) * len(negatives)))


def test_dice_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[0:2, 0:2] = True  # 4 pixels
    prediction = np.zeros((4, 4), bool)
    prediction[1:3, 1:3] = True  # 4 pixels, 1 shared
    assert dice_score(prediction, truth) == pytest.approx(2 * 1 / 8)
    assert dice_score(truth, truth) == 1.0
    assert dice_score(np.zeros((4, 4)), np.zeros((4, 4))) == 1.0
    assert dice_score(prediction, np.zeros((4, 4))) == 0.0


def test_segmentation_metrics_separates_empty_masks():
    summary = segmentation_metrics(
        dice=[0.8, 0.6, 1.0, 0.0, None],
        truth_empty=[False, False, True, True, False],
        prediction_empty=[False, False, True, False, True],
    )
    assert summary["dice"] == pytest.approx(0.7)
    assert summary["dice_all"] == pytest.approx(2.4 / 4)
    assert summary["false_lesion_rate"] == pytest.approx(0.5)
    assert summary["n_lesion_masks"] == 2 and summary["n_empty_masks"] == 2


def _row(label, p, dataset, scanner="", dice=None, truth_empty=False, prediction_empty=False):
    return {"label": label, "p_malignant": p, "dataset": dataset, "scanner": scanner, "dice": dice,
            "truth_empty": truth_empty, "prediction_empty": prediction_empty}


def test_grouped_report_per_dataset_and_scanner():
    rows = [
        _row(0, 0.2, "busi", dice=0.5), _row(1, 0.8, "busi", dice=0.7),
        _row(-1, 0.4, "busi", dice=1.0, truth_empty=True, prediction_empty=True),
        _row(0, 0.6, "busbra", "LOGIQ5", dice=0.9), _row(1, 0.7, "busbra", "LOGIQ5", dice=0.8),
        _row(1, 0.1, "busbra", "LOGIQ7", dice=0.2),
    ]
    report = grouped_report(rows)
    assert set(report["datasets"]) == {"busi", "busbra"}
    assert set(report["scanners"]) == {"LOGIQ5", "LOGIQ7"}  # unknown scanners are not a group
    assert report["overall"]["images"] == 6 and report["overall"]["n"] == 5
    assert report["datasets"]["busi"]["auc"] == 1.0
    assert report["datasets"]["busi"]["dice"] == pytest.approx(0.6)
    assert report["datasets"]["busi"]["false_lesion_rate"] == 0.0
    # busbra: M scores 0.7, 0.1; B scores 0.6 -> 1 win of 2 pairs.
    assert report["datasets"]["busbra"]["auc"] == pytest.approx(0.5)
    assert math.isnan(report["scanners"]["LOGIQ7"]["auc"])
    assert math.isnan(report["datasets"]["busbra"]["false_lesion_rate"])
    text = json.dumps(json_safe(report), allow_nan=False)
    assert json.loads(text)["scanners"]["LOGIQ7"]["auc"] is None
