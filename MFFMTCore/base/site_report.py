"""The site report of a fine-tuning run: is the new model better than the model it started from?

``mffmt train --init-model PARENT`` ends by scoring the parent and the new model on the run's
validation patients (:func:`MFFMTCore.evaluation.site_report.site_report`) and writes
``RUN_DIR/site_report.json`` (strict JSON) and ``site_report.png``. This module is its torch-free
side: the metrics it holds, reading it back, and the one paragraph (with a plain warning when the
new model is not better) that the command prints and the Slicer module shows when training ends.

Layout: ``format`` = :data:`FORMAT`, ``version``, ``patients``, ``frames`` (counts), ``parent`` and
``new`` (``model`` path, ``sha256``, ``temperature``, ``lesion_decision``, ``metrics``: per metric of
:data:`METRICS` ``{"value", "low", "high"}``, a 95% patient-level bootstrap interval), ``difference``
(new minus parent, paired bootstrap), ``worse_on`` and ``better_on`` (the metrics of
:data:`DECIDING` on which the new model is worse / better beyond the noise: the difference's interval
excludes no change), ``better`` (better on one, worse on none), ``summary`` and ``warning`` (text,
or null: a warning whenever the new model is not better).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from MFFMTCore.base.jsonsafe import loads_strict
from MFFMTCore.errors import MFFMTError

FORMAT = "mffmt-site-report"
VERSION = 1
#: name -> (words, True when higher is better).
METRICS: dict[str, tuple[str, bool]] = {
    "auc": ("AUC", True),
    "sensitivity": ("sensitivity", True),
    "specificity": ("specificity", True),
    "dice": ("Dice", True),
    "lesion_free_flagged": ("lesion-free frames given a lesion", False),
    "ece": ("ECE", False),
}
#: Fewest validation patients whose bootstrap intervals can tell two models apart.
MIN_PATIENTS = 5
#: The metrics that decide "better": the others move along an operating point (and sensitivity
#: against specificity is a choice, not an improvement).
DECIDING = ("auc", "dice", "lesion_free_flagged", "ece")


def _value(entry: dict[str, Any] | None) -> float | None:
    value = (entry or {}).get("value")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def _side(report: dict[str, Any], name: str) -> int:
    """+1 when the new model is better on ``name`` beyond the noise (the paired bootstrap interval of
    the difference lies on the better side), -1 when worse beyond it, 0 otherwise."""
    entry = report.get("difference", {}).get(name) or {}
    low, high = entry.get("low"), entry.get("high")
    if report.get("patients", 0) < MIN_PATIENTS or not (isinstance(low, (int, float)) and isinstance(high, (int, float))):
        return 0
    sign = 1 if METRICS[name][1] else -1
    if sign * low > 0 and sign * high > 0:
        return 1
    if sign * low < 0 and sign * high < 0:
        return -1
    return 0


def worse_on(report: dict[str, Any]) -> list[str]:
    """The deciding metrics on which the new model is worse than its parent beyond the noise."""
    return [name for name in DECIDING if _side(report, name) < 0]


def better_on(report: dict[str, Any]) -> list[str]:
    """The deciding metrics on which the new model is better than its parent beyond the noise."""
    return [name for name in DECIDING if _side(report, name) > 0]


def _interval(entry: dict[str, Any] | None, percent: bool = False) -> str:
    value = _value(entry)
    if value is None:
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    low, high = (entry or {}).get("low"), (entry or {}).get("high")
    if isinstance(low, (int, float)) and isinstance(high, (int, float)):
        return f"{scale * value:.{0 if percent else 3}f}{unit} ({scale * low:.{0 if percent else 3}f}-" \
               f"{scale * high:.{0 if percent else 3}f})"
    return f"{scale * value:.{0 if percent else 3}f}{unit}"


def warning_text(report: dict[str, Any]) -> str | None:
    """The plain warning when the new model is not better than its parent, else None."""
    if report["patients"] < MIN_PATIENTS:
        return (f"Warning: only {report['patients']} validation patient(s): too few to tell whether the new model is "
                f"better than the model it started from (at least {MIN_PATIENTS} are needed).")
    worse = report.get("worse_on") or []
    if worse:
        names = ", ".join(METRICS[name][0] for name in worse)
        return (f"Warning: the new model is not better than the model it started from on these "
                f"{report['patients']} validation patients: worse on {names}, beyond the noise. Keep using "
                "the model you started from, or fine-tune on more patients.")
    if not better_on(report):
        return (f"Warning: the new model is not shown to be better than the model it started from: on these "
                f"{report['patients']} validation patients no difference in AUC, Dice, lesion-free frames given "
                "a lesion or ECE is beyond the noise (each bootstrap interval includes no change).")
    return None


def summary_text(report: dict[str, Any]) -> str:
    """One paragraph: both models' figures with their intervals, then the warning if there is one."""
    frames = report.get("frames", {})
    parts = []
    for key, words in (("parent", "started from"), ("new", "new model")):
        metrics = report[key]["metrics"]
        parts.append(f"{words}: AUC {_interval(metrics.get('auc'))}, sensitivity/specificity "
                     f"{_interval(metrics.get('sensitivity'))} / {_interval(metrics.get('specificity'))}, "
                     f"Dice {_interval(metrics.get('dice'))}, lesion-free frames given a lesion "
                     f"{_interval(metrics.get('lesion_free_flagged'), percent=True)}, ECE {_interval(metrics.get('ece'))}")
    text = (f"Site report on {report['patients']} validation patients ({frames.get('classified', 0)} benign/malignant "
            f"frames, {frames.get('lesion_free', 0)} lesion-free; 95% patient-bootstrap intervals). "
            + "; ".join(parts) + ".")
    warning = report.get("warning")
    return f"{text} {warning}" if warning else text


def read_site_report(path: str | os.PathLike) -> dict[str, Any]:
    """A run's site_report.json, checked.

    Raises:
        MFFMTError: missing, not JSON, or not a site report of this version.
    """
    path = Path(path)
    try:
        report = loads_strict(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise MFFMTError(path, f"cannot be read as a site report ({error})") from error
    if not isinstance(report, dict) or report.get("format") != FORMAT:
        raise MFFMTError(path, "not an MFFMT site report")
    if report.get("version") != VERSION:
        raise MFFMTError(path, f"site report version {report.get('version')!r}; this version reads {VERSION}")
    for key in ("parent", "new"):
        if not isinstance(report.get(key), dict) or not isinstance(report[key].get("metrics"), dict):
            raise MFFMTError(path, f"site report has no {key!r} metrics")
    return report
