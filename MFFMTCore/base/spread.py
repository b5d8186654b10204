"""Indices spread evenly over a sequence: the frames or records a bounded pass looks at."""

from __future__ import annotations

import numpy as np


def evenly(count: int, limit: int | None) -> list[int]:
    """At most ``limit`` indices of ``range(count)``, spread evenly (all when ``limit`` is None or larger)."""
    if limit is None or limit >= count:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, limit).round()]  # steps of >= 1: no index twice
