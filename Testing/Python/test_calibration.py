"""Calibration on validation: temperature scaling, expected calibration error, the lesion rule."""

from __future__ import annotations

import numpy as np
import pytest

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.evaluation.calibration import (
    calibrated_probability,
    choose_lesion_decision,
    expected_calibration_error,
    fit_temperature,
    lesion_tradeoff,
    reliability_bins,
    tradeoff_points,
)
from MFFMTCore.evaluation.plots import plot_lesion_tradeoff


def overconfident(temperature: float, cases: int = 4000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from sigmoid(z) and logits reported as temperature * z: overconfident for T > 1."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 2, cases)
    labels = (rng.random(cases) < 1 / (1 + np.exp(-z))).astype(int)
    return temperature * z, labels


def test_temperature_recovers_the_overconfidence():
    logits, labels = overconfident(3.0)
    assert fit_temperature(logits, labels) == pytest.approx(3.0, rel=0.1)


def test_temperature_lowers_the_calibration_error_and_keeps_the_ranking():
    logits, labels = overconfident(3.0)
    temperature = fit_temperature(logits, labels)
    before = expected_calibration_error(calibrated_probability(logits), labels)
    after = expected_calibration_error(calibrated_probability(logits, temperature), labels)
    assert before > 0.08 and after < 0.03
    assert np.array_equal(np.argsort(calibrated_probability(logits)), np.argsort(calibrated_probability(logits, temperature)))


def test_cases_without_a_class_are_ignored():
    logits, labels = overconfident(2.0, cases=500)
    with_normals = np.concatenate([logits, [50.0] * 100]), np.concatenate([labels, [-1] * 100])
    assert fit_temperature(*with_normals) == fit_temperature(logits, labels)
    assert expected_calibration_error(calibrated_probability(with_normals[0]), with_normals[1]) == \
        expected_calibration_error(calibrated_probability(logits), labels)


def test_temperature_needs_both_classes():
    with pytest.raises(ValueError, match="benign and malignant"):
        fit_temperature([1.0, 2.0], [1, 1])


def test_ece_by_hand():
    # Bin [0.1, 0.2): p 0.1, 0.1, observed 1/2 -> gap 0.4; bin [0.9, 1]: p 0.9, observed 1 -> gap 0.1.
    probabilities, labels = [0.1, 0.1, 0.9], [0, 1, 1]
    assert expected_calibration_error(probabilities, labels) == pytest.approx((2 * 0.4 + 0.1) / 3)
    bins = reliability_bins(probabilities, labels)
    assert [b["cases"] for b in bins] == [0, 2, 0, 0, 0, 0, 0, 0, 0, 1]


def test_lesion_rule_keeps_the_lesion_frames_and_drops_what_it_can():
    # Lesion frames: peaks 0.9..1.0 and areas 1-10%; lesion-free: low peaks, or small specks.
    rng = np.random.default_rng(1)
    lesion_peaks, lesion_areas = rng.uniform(0.9, 1.0, 200), rng.uniform(0.01, 0.1, 200)
    free_peaks = np.concatenate([rng.uniform(0.5, 0.85, 50), rng.uniform(0.9, 1.0, 50)])
    free_areas = np.concatenate([rng.uniform(0.01, 0.1, 50), rng.uniform(0.0005, 0.005, 50)])
    rule = choose_lesion_decision(np.concatenate([lesion_peaks, free_peaks]), np.concatenate([lesion_areas, free_areas]),
                                  [True] * 200 + [False] * 100, min_kept=0.95)
    kept = np.mean([rule.present(p, a) for p, a in zip(lesion_peaks, lesion_areas)])
    flagged = np.mean([rule.present(p, a) for p, a in zip(free_peaks, free_areas)])
    assert kept >= 0.95 and flagged == 0.0


def test_lesion_rule_needs_both_kinds_of_frame():
    with pytest.raises(ValueError, match="with and frames without"):
        choose_lesion_decision([0.9, 0.8], [0.1, 0.1], [True, True])


def test_lesion_decision_values_are_checked():
    assert LesionDecision.from_json(None) == LesionDecision()
    assert LesionDecision().present(0.01, 0.001) and not LesionDecision().present(0.99, 0.0)
    with pytest.raises(ValueError, match="min_peak"):
        LesionDecision.from_json({"min_peak": 1.5})
    with pytest.raises(ValueError, match="unknown"):
        LesionDecision.from_json({"min_peek": 0.5})


def test_lesion_tradeoff_is_the_frontier_of_the_rules():
    # Four lesion frames and four lesion-free ones; one lesion frame has an empty map (never kept).
    peaks = [0.99, 0.95, 0.90, 0.50, 0.97, 0.80, 0.60, 0.30]
    areas = [0.05, 0.04, 0.01, 0.00, 0.03, 0.03, 0.02, 0.01]
    lesion = [True, True, True, True, False, False, False, False]
    curve = lesion_tradeoff(peaks, areas, lesion)
    assert curve["flagged"] == sorted(curve["flagged"]) and curve["kept"] == sorted(curve["kept"])
    # Two lesion frames are kept with no lesion-free frame flagged (area > 0.03); the third costs the
    # lesion-free frame that peaks at 0.97; the fourth (an empty map) no rule keeps.
    assert list(zip(curve["flagged"], curve["kept"])) == [(0.0, 0.5), (0.25, 0.75)]
    for flagged, kept, rule in zip(curve["flagged"], curve["kept"], curve["rules"]):  # each point is its rule's
        found = [LesionDecision(**rule).present(p, a) for p, a in zip(peaks, areas)]
        assert (np.mean(found[4:]), np.mean(found[:4])) == (flagged, kept)
    points = tradeoff_points(curve, max_flagged=(0.0, 0.25), min_kept=(0.75, 0.9))
    assert points["kept_at_flagged_0"] == 0.5 and points["flagged_at_kept_0.9"] is None
    assert points["kept_at_flagged_0.25"] == 0.75 and points["flagged_at_kept_0.75"] == 0.25
    with pytest.raises(ValueError):
        lesion_tradeoff([0.9], [0.1], [True])


def test_lesion_tradeoff_picture(tmp_path):
    curve = lesion_tradeoff([0.9, 0.8, 0.7, 0.6], [0.1, 0.1, 0.05, 0.05], [True, False, True, False])
    path = plot_lesion_tradeoff({"a": curve}, tmp_path / "tradeoff.png", marks={"a": (0.5, 1.0)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
