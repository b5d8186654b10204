"""Training progress for people (a tqdm bar) and for programs (JSON lines).

``RUN_DIR/progress.jsonl`` holds one event per line, flushed as soon as it is written, so the
Slicer retraining tab (or ``tail -f``) can follow a run. The events are those of every ``mffmt``
command (:mod:`MFFMTCore.base.progress_events`); training sends ``start``, ``resumed``, ``step``,
``epoch``, ``progress`` (the end-of-run model completion: ``done`` of ``total`` units and a ``message``),
``done``, ``cancelled`` and ``error``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

from MFFMTCore.base.progress_bar import progress_bar
from MFFMTCore.base.progress_events import event_line, make_event, parse_event_line


class EtaClock:
    """Estimates the time left from the steps done so far in this process.

    Validation and checkpoint time are spread over the training steps, so after the first epoch the
    estimate includes them.

    Args:
        total_steps: training steps of the whole run.
        done_steps: steps already done before this process started (on resume).
    """

    def __init__(self, total_steps: int, done_steps: int = 0) -> None:
        self.total_steps = total_steps
        self.first_step = done_steps
        self.done_steps = done_steps
        self.started = time.monotonic()

    def update(self, done_steps: int) -> None:
        self.done_steps = done_steps

    def eta_s(self) -> float | None:
        """Seconds left, or None before the first step of this process."""
        steps = self.done_steps - self.first_step
        if steps <= 0:
            return None
        rate = (time.monotonic() - self.started) / steps
        return round(rate * max(self.total_steps - self.done_steps, 0), 1)


class ProgressLog:
    """Appends JSON-lines events to a file, one flushed line each.

    Args:
        path: the progress file; None writes nothing (e.g. on ranks other than 0 under torchrun).
    """

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path is not None else None
        self._handle: TextIO | None = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = self.path.open("a", encoding="utf-8")

    def event(self, event: str, **fields: Any) -> dict[str, Any]:
        """Write one event and return it."""
        record = make_event(event, **fields)
        if self._handle is not None:
            self._handle.write(event_line(record) + "\n")
            self._handle.flush()
        return record

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def read_progress(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Every complete event of a progress file (a line cut short by a hard kill is skipped)."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [event for event in map(parse_event_line, lines) if event is not None]


def epoch_bar(epoch: int, epochs: int, steps: int, enabled: bool) -> tqdm:
    """A tqdm bar for one epoch's steps; disabled bars cost nothing."""
    return progress_bar(total=steps, desc=f"epoch {epoch}/{epochs}", unit="step", dynamic_ncols=True,
                        leave=False, disable=not enabled)


class CompletionStopped(Exception):
    """The user asked the run to stop while its model was being completed."""


class CompletionBar:
    """Progress of the end-of-run model completion (:func:`MFFMTCore.model_completion.complete_run`):
    ``progress`` events in the run's log and, in the terminal, a bar. It is also where a stop request
    is honoured: the completion calls it after every image, and the model file is only rewritten (at
    once) when a part is fitted, so stopping between two calls leaves it whole.

    Args:
        log: the run's progress log.
        enabled: show the bar.
        stop_requested: whether the user asked to stop; :class:`CompletionStopped` is raised when so.
    """

    PREFIX = "completing the model: "

    def __init__(self, log: ProgressLog, enabled: bool, stop_requested: Callable[[], bool] | None = None) -> None:
        self.log = log
        self.enabled = enabled
        self.stop_requested = stop_requested
        self.bar: tqdm | None = None
        self.message = ""

    def __call__(self, done: int, total: int, message: str) -> None:
        if self.bar is None:
            self.bar = progress_bar(total=total, desc="completing the model", unit="unit", dynamic_ncols=True,
                                    leave=False, disable=not self.enabled)
        if message != self.message:
            self.message = message
            self.bar.set_postfix_str(message, refresh=False)
        self.bar.update(done - self.bar.n)
        self.log.event("progress", done=done, total=total, message=self.PREFIX + message)
        if self.stop_requested is not None and self.stop_requested():
            raise CompletionStopped(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
