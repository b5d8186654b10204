"""Strict JSON (``allow_nan=False``): values made fit for it (non-finite floats become null), and reading it."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np


def json_safe(value: Any) -> Any:
    """``value`` with every non-finite float replaced by None and numpy scalars made plain (for JSON)."""
    if isinstance(value, dict):
        return {str(key): json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def _refuse_constant(token: str) -> None:
    raise ValueError(f"{token} is not strict JSON")


def loads_strict(text: str | bytes, **options: Any) -> Any:
    """``json.loads`` that refuses ``NaN``, ``Infinity`` and ``-Infinity`` (ValueError), as everything
    we write is strict; ``options`` go to ``json.loads`` (e.g. ``parse_float``)."""
    return json.loads(text, parse_constant=_refuse_constant, **options)
