"""Whether a frame shows a lesion at all: a rule on the lesion map, stored in the model file.

A lesion map almost always has a few pixels over the threshold, also on lesion-free frames (most of a
clip): taken at face value, two thirds of BUSI's normal images "had a lesion". The frame-level decision
asks more of the map: its highest probability (``p_lesion``) must reach ``min_peak`` and its largest
region must cover at least ``min_area_fraction`` of the analysed area. Both are chosen on validation
(:func:`MFFMTCore.evaluation.calibration.choose_lesion_decision`) so that lesion frames keep their
lesion; a frame without a lesion has an empty label map and no components.

Numpy only (no torch): the Slicer side reads the same rule.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class LesionDecision:
    """The frame-level lesion rule.

    Args:
        min_peak: smallest highest-pixel lesion probability of a frame with a lesion.
        min_area_fraction: smallest area of the largest lesion region, as a fraction of the analysed
            area (the frame, or the ROI).
    """

    min_peak: float = 0.0
    min_area_fraction: float = 0.0

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"lesion decision: {name} must be a number in [0, 1], not {value!r}")

    def present(self, peak: float, largest_fraction: float) -> bool:
        """True when a frame whose map peaks at ``peak`` and whose largest region covers
        ``largest_fraction`` of the analysed area shows a lesion."""
        return largest_fraction > 0.0 and peak >= self.min_peak and largest_fraction >= self.min_area_fraction

    def to_json(self) -> dict[str, float]:
        return asdict(self)

    @classmethod
    def from_json(cls, values: dict[str, Any] | None) -> LesionDecision:
        """The rule recorded in a model file; an absent rule (older files) counts any lesion pixel.

        Raises:
            ValueError: unknown keys or values outside [0, 1].
        """
        values = dict(values or {})
        unknown = sorted(set(values) - {"min_peak", "min_area_fraction"})
        if unknown:
            raise ValueError(f"lesion decision: unknown key(s) {', '.join(unknown)}")
        return cls(**values)
