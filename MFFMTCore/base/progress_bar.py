"""The progress bar people see: a tqdm bar that redraws freely in a terminal and is throttled in a log.

tqdm redraws a bar up to ten times a second. In a terminal each redraw replaces the last; where
stderr is a file or a pipe (a cluster job's log, CI, a process whose output another program reads)
every redraw stays, and a training run's log grows by megabytes of bars. So every bar of MFFMTCore
comes from :func:`progress_bar`, which keeps tqdm's behaviour in a terminal and, elsewhere, draws
at most one bar every :data:`LOG_INTERVAL_S` seconds (plus the last). tqdm is imported when a bar
is made, so this module is importable before the first-use install (Slicer's Python).
"""

from __future__ import annotations

import sys
from typing import Any

#: Seconds between two bars written where the output is not a terminal.
LOG_INTERVAL_S = 30.0


def is_terminal(stream: Any) -> bool:
    """Whether ``stream`` is an interactive terminal."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress_bar(iterable: Any = None, **options: Any) -> Any:
    """A ``tqdm`` bar over ``iterable`` (or to update by hand), with tqdm's ``options``.

    Where its output (``file``, default stderr) is not a terminal, it is redrawn at most every
    :data:`LOG_INTERVAL_S` seconds and at a fixed width.
    """
    from tqdm import tqdm

    stream = options.get("file") or sys.stderr
    if not is_terminal(stream):
        options["mininterval"] = max(float(options.get("mininterval", 0.0)), LOG_INTERVAL_S)
        options["dynamic_ncols"] = False
    return tqdm(iterable, **options)
