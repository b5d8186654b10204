"""Calibration on validation data: what the shown numbers mean.

- Temperature scaling (Guo et al., ICML 2017): one scalar ``T`` divides the malignant-minus-benign
  logit; it keeps every ranking (AUC unchanged) and makes p(malignant) match observed frequencies.
  Fitted by minimising the negative log-likelihood over a grid (one parameter: a grid is exact enough
  and cannot diverge).
- Expected calibration error: the mean gap between confidence and observed frequency over equal-width
  probability bins, weighted by the bins' shares of the cases.
- The frame-level lesion rule (:class:`MFFMTCore.base.lesion_decision.LesionDecision`): the rule that
  keeps a lesion on at least ``min_kept`` of the frames with one while giving one to the fewest
  lesion-free frames.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from MFFMTCore.base.lesion_decision import LesionDecision


def _labelled(logits: Sequence[float], labels: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    logits, labels = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    keep = labels >= 0
    return logits[keep], labels[keep].astype(np.float64)


def fit_temperature(logits: Sequence[float], labels: Sequence[int]) -> float:
    """The temperature in [0.05, 20] minimising the log-loss of ``sigmoid(logit / T)``.

    Args:
        logits: malignant-minus-benign logits (softmax of two logits = sigmoid of their difference).
        labels: 1 malignant, 0 benign; other values (no class) are ignored.

    Raises:
        ValueError: fewer than one case of each class.
    """
    z, y = _labelled(logits, labels)
    if y.sum() < 1 or (1 - y).sum() < 1:
        raise ValueError("temperature scaling needs benign and malignant cases")
    grid = np.exp(np.linspace(np.log(0.05), np.log(20.0), 400))
    losses = [np.mean(np.logaddexp(0.0, z / t) - y * z / t) for t in grid]
    return float(grid[int(np.argmin(losses))])


def calibrated_probability(logits: Sequence[float], temperature: float = 1.0) -> np.ndarray:
    """p(malignant) = sigmoid(logit / temperature)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64) / temperature))


def reliability_bins(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> list[dict]:
    """Per equal-width bin of p(malignant): cases, mean probability and observed malignant share."""
    p, y = _labelled(probabilities, labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    return [{"low": float(edges[b]), "high": float(edges[b + 1]), "cases": int((index == b).sum()),
             "mean_probability": float(p[index == b].mean()) if (index == b).any() else None,
             "observed": float(y[index == b].mean()) if (index == b).any() else None} for b in range(bins)]


def expected_calibration_error(probabilities: Sequence[float], labels: Sequence[int], bins: int = 10) -> float:
    """ECE of p(malignant) over ``bins`` equal-width bins (cases without a class are ignored)."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(row["cases"] for row in table)
    if total == 0:
        return float("nan")
    return float(sum(row["cases"] * abs(row["mean_probability"] - row["observed"])
                     for row in table if row["cases"]) / total)


def rule_outcomes(peaks: Sequence[float], largest_fractions: Sequence[float], has_lesion: Sequence[bool],
                  peak_grid: Sequence[float], area_grid: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """What each lesion rule of a grid does to the frames: (kept, flagged), each (len(peak_grid), len(area_grid)):
    the share of lesion frames that keep a lesion and of lesion-free frames given one (nan without such frames).

    Args:
        peaks, largest_fractions, has_lesion: as for :func:`choose_lesion_decision`.
        peak_grid, area_grid: the rules' ``min_peak`` and ``min_area_fraction`` values.
    """
    peaks, fractions = np.asarray(peaks, dtype=np.float64), np.asarray(largest_fractions, dtype=np.float64)
    lesion = np.asarray(has_lesion, dtype=bool)
    found = ((peaks[None, None] >= np.asarray(peak_grid, dtype=np.float64)[:, None, None])
             & (fractions > 0) & (fractions[None, None] >= np.asarray(area_grid, dtype=np.float64)[None, :, None]))
    with np.errstate(invalid="ignore"):
        return found[..., lesion].mean(axis=-1), found[..., ~lesion].mean(axis=-1)


def _both_kinds(peaks: Sequence[float], largest_fractions: Sequence[float], has_lesion: Sequence[bool],
                what: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The frames' peaks, largest-region fractions and lesion flags as arrays; ``what`` needs frames
    with and frames without a lesion (ValueError otherwise)."""
    lesion = np.asarray(has_lesion, dtype=bool)
    if lesion.all() or not lesion.any():
        raise ValueError(f"{what} needs frames with and frames without a lesion")
    return np.asarray(peaks, dtype=np.float64), np.asarray(largest_fractions, dtype=np.float64), lesion


def choose_lesion_decision(peaks: Sequence[float], largest_fractions: Sequence[float], has_lesion: Sequence[bool],
                           min_kept: float = 0.95) -> LesionDecision:
    """The lesion rule that keeps at least ``min_kept`` of the lesion frames and flags the fewest
    lesion-free ones (ties: the one keeping more lesion frames, then the milder rule).

    Args:
        peaks: highest lesion probability of each frame's map.
        largest_fractions: area of each frame's largest lesion region / the frame's area.
        has_lesion: whether each frame truly shows a lesion.
        min_kept: the share of lesion frames that must keep their lesion.

    Raises:
        ValueError: no lesion-free or no lesion frames.
    """
    peaks, fractions, lesion = _both_kinds(peaks, largest_fractions, has_lesion, "choosing a lesion rule")
    # Candidate thresholds: the values the lesion frames take (beyond them nothing changes).
    peak_grid = np.unique(np.concatenate([[0.0], np.quantile(peaks[lesion], np.linspace(0, 1 - min_kept, 26))]))
    area_grid = np.unique(np.concatenate([[0.0], np.quantile(fractions[lesion], np.linspace(0, 1 - min_kept, 26))]))
    kept, flagged = rule_outcomes(peaks, fractions, lesion, peak_grid, area_grid)
    mildness = peak_grid[:, None] + area_grid[None, :]
    best: tuple | None = None
    for i, j in np.ndindex(kept.shape):
        if kept[i, j] + 1e-12 < min_kept:
            continue
        key = (flagged[i, j], -kept[i, j], mildness[i, j])
        if best is None or key < best[0]:
            best = (key, peak_grid[i], area_grid[j])
    if best is None:  # even the mildest rule loses lesions (empty maps): count any lesion pixel
        return LesionDecision()
    return LesionDecision(float(best[1]), float(best[2]))


def lesion_tradeoff(peaks: Sequence[float], largest_fractions: Sequence[float], has_lesion: Sequence[bool],
                    steps: int = 41) -> dict[str, list]:
    """The trade-off of the frame-level lesion rule: lesion frames keeping a lesion against lesion-free
    frames given one, over every rule of a grid (``min_peak`` and ``min_area_fraction`` each at ``steps``
    quantiles of the frames' own values, and 0), reduced to its frontier: for each share of lesion-free
    frames given a lesion, the rule keeping the most lesion frames. The rules are chosen on the frames
    they are scored on, so the frontier is the best any rule of this form could do here (optimistic).

    Returns:
        ``flagged``, ``kept`` (shares, ascending in ``flagged``) and ``rules`` (the rule of each point, JSON).

    Raises:
        ValueError: no lesion-free or no lesion frames.
    """
    peaks, fractions, lesion = _both_kinds(peaks, largest_fractions, has_lesion, "a lesion trade-off")
    quantiles = np.linspace(0, 1, steps)
    peak_grid = np.unique(np.concatenate([[0.0], np.quantile(peaks, quantiles)]))
    area_grid = np.unique(np.concatenate([[0.0], np.quantile(fractions, quantiles)]))
    kept, flagged = rule_outcomes(peaks, fractions, lesion, peak_grid, area_grid)
    order = sorted(np.ndindex(kept.shape), key=lambda ij: (flagged[ij], -kept[ij]))
    frontier: dict[str, list] = {"flagged": [], "kept": [], "rules": []}
    for i, j in order:
        if frontier["kept"] and kept[i, j] <= frontier["kept"][-1]:
            continue
        frontier["flagged"].append(float(flagged[i, j]))
        frontier["kept"].append(float(kept[i, j]))
        frontier["rules"].append(LesionDecision(float(peak_grid[i]), float(area_grid[j])).to_json())
    return frontier


def tradeoff_points(frontier: dict[str, list], max_flagged: Sequence[float] = (0.10, 0.20),
                    min_kept: Sequence[float] = (0.95, 0.97)) -> dict[str, float | None]:
    """Read a :func:`lesion_tradeoff` frontier at the goals: the most lesion frames kept with at most each
    ``max_flagged`` share of lesion-free frames given a lesion (``kept_at_flagged_0.1``), and the fewest
    lesion-free frames given one while keeping at least each ``min_kept`` (``flagged_at_kept_0.97``;
    None where no rule reaches it)."""
    points = list(zip(frontier["flagged"], frontier["kept"]))
    summary: dict[str, float | None] = {}
    for limit in max_flagged:
        within = [kept for flagged, kept in points if flagged <= limit + 1e-12]
        summary[f"kept_at_flagged_{limit:g}"] = max(within) if within else None
    for goal in min_kept:
        reaching = [flagged for flagged, kept in points if kept + 1e-12 >= goal]
        summary[f"flagged_at_kept_{goal:g}"] = min(reaching) if reaching else None
    return summary
