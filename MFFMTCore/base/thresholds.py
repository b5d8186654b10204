"""The one rule for a probability threshold: the lesion threshold and the malignancy threshold.

A threshold ``t`` calls a pixel lesion (a case malignant) when its probability ``p >= t``. It must lie
strictly between 0 and 1:

- ``t = 0`` calls every pixel lesion (every case malignant): that is no decision at all;
- ``t = 1`` keeps only probabilities that rounded to exactly 1.0 in float32 (a sigmoid saturates
  beyond a logit of about 17), so the answer would depend on the arithmetic of the device rather
  than on the model.

``mffmt predict``/``live``/``evaluate`` (``--lesion-threshold``, ``--malignancy-threshold``), the model
file, the ``mffmt serve`` worker, the results reader and the Slicer module (its slider and its
requests) all check thresholds with :func:`check_threshold`.
"""

from __future__ import annotations

import math
from typing import Any

from MFFMTCore.errors import MFFMTError

#: Thresholds lie strictly between these bounds.
THRESHOLD_LOW, THRESHOLD_HIGH = 0.0, 1.0
#: The step of the Slicer module's threshold slider.
THRESHOLD_STEP = 0.01
#: The slider's closed range: the open range above, one step inside each bound (0.01 .. 0.99).
SLIDER_RANGE = (round(THRESHOLD_LOW + THRESHOLD_STEP, 2), round(THRESHOLD_HIGH - THRESHOLD_STEP, 2))


def threshold_problem(value: Any) -> str | None:
    """What is wrong with ``value`` as a threshold, or None when it is one."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not THRESHOLD_LOW < value < THRESHOLD_HIGH:
        return f"must be a probability strictly between {THRESHOLD_LOW:g} and {THRESHOLD_HIGH:g}, got {value!r}"
    return None


def check_threshold(value: Any, name: str = "lesion threshold") -> float:
    """``value`` as a float.

    Args:
        value: the threshold.
        name: what it is (an option or field name), for the message.

    Raises:
        MFFMTError: ``value`` is not a number strictly between 0 and 1 (see the module's docstring).
    """
    problem = threshold_problem(value)
    if problem is not None:
        raise MFFMTError(name, problem)
    return float(value)
