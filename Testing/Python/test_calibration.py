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
    reliability_bins,
)


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
