"""Which pixel spacings a file may claim: the one plausibility rule for calibrations read from headers.

A header's calibration (a DICOM ultrasound region's PhysicalDeltaX/Y, PixelSpacing) turns pixel
counts into the mm and mm² that reach results.csv, the DICOM SR and Slicer's rulers. A header that
lies (1e10 cm per pixel, 0.01 x 100 cm, infinity) would give a 6e25 mm² lesion with a 70 m long
axis; such a calibration is ignored, with a note, and the frame is measured in pixels.

The range holds every ultrasound capture: a 70 MHz preclinical probe resolves about 30 µm, and a
32-pixel frame (the smallest MFFMT classifies) at the upper limit already spans 16 cm, deeper than
any breast scan. Scanners' pixels are square or nearly so; a resized capture stays within a few to
one, so a ratio above :data:`MAX_ANISOTROPY` is a broken header, not a probe.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

# Pixel spacing (mm) a calibration may give, both ends included.
PLAUSIBLE_SPACING_MM = (0.001, 5.0)
# Largest ratio of the two spacings of one pixel.
MAX_ANISOTROPY = 10.0


def spacing_problem(spacing: Sequence[float]) -> str | None:
    """Why a (column, row) pixel spacing in mm cannot be a real calibration, or None when it can.

    Args:
        spacing: the two in-plane spacings in mm.
    """
    if len(spacing) != 2:
        return f"has {len(spacing)} value(s), not 2"
    low, high = PLAUSIBLE_SPACING_MM
    if not all(math.isfinite(value) and low <= value <= high for value in spacing):
        return f"gives {spacing[0]:.4g} x {spacing[1]:.4g} mm pixels, outside the plausible {low:g}-{high:g} mm"
    if max(spacing) > MAX_ANISOTROPY * min(spacing):
        return (f"gives {spacing[0]:.4g} x {spacing[1]:.4g} mm pixels, more than {MAX_ANISOTROPY:g} times "
                "longer one way than the other")
    return None
