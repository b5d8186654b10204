"""Progress of ``mffmt predict`` (events on stdout) and ``mffmt train`` (RUN_DIR/progress.jsonl).

Both send the events of :mod:`MFFMTCore.base.progress_events`. ``mffmt predict --progress json``
prints ``start``, one ``progress`` per finished input (its ``status``: done, skipped or failed, and
the ``message`` of a failure), then ``done``, ``cancelled`` or ``error``; other output lines
(warnings, logs) are not events. ``mffmt train`` appends its events to ``RUN_DIR/progress.jsonl``,
flushing each line; a reader may still catch the last line half-written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from MFFMTCore.base.progress_events import parse_event_line

__all__ = ["EpochRecord", "JsonlTail", "PredictProgress", "TrainingState"]


@dataclass
class PredictProgress:
    """What ``mffmt predict`` has reported so far.

    ``failures`` maps each input that failed to why; ``error`` is set when the run as a whole
    stopped on an error (no model, output folder unusable), ``cancelled`` when it was stopped.
    """

    done: int = 0
    total: int = 0
    current_input: str = ""
    finished: bool = False
    cancelled: bool = False
    error: str | None = None
    failures: dict[str, str] = field(default_factory=dict)

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind in ("start", "progress", "cancelled") and event.get("total") is not None:
            self.total = int(event["total"])
        if kind == "progress":
            self.done = int(event.get("done", self.done))
            self.current_input = str(event.get("input", ""))
            if event.get("status") == "failed":
                self.failures[self.current_input] = str(event.get("message") or "failed")
        elif kind == "done":
            self.finished = True
            self.total = int(event.get("total", self.total))
            self.done = self.total
        elif kind == "cancelled":
            self.finished = self.cancelled = True
        elif kind == "error":
            self.finished = True
            self.error = str(event.get("message") or "prediction failed")

    @property
    def fraction(self) -> float:
        """Share of the inputs finished, 0 to 1."""
        if self.finished:
            return 1.0
        return min(1.0, self.done / self.total) if self.total else 0.0


class JsonlTail:
    """Reads the events a process appends to a JSON-lines file, a few at a time.

    Each :meth:`read_events` returns the events of the complete lines added since the previous call.
    A last line without its newline is kept until the rest arrives; a line that is not an event (see
    :func:`MFFMTCore.base.progress_events.parse_event_line`) is counted in ``bad_lines`` and skipped.
    If the file is replaced by a shorter one, reading starts over.

    Args:
        path: the file (it may not exist yet).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._offset = 0
        self._partial = b""
        self.bad_lines = 0

    def read_events(self) -> list[dict[str, Any]]:
        try:
            with open(self.path, "rb") as handle:
                size = os.fstat(handle.fileno()).st_size
                if size < self._offset:  # a new file in its place
                    self._offset, self._partial = 0, b""
                handle.seek(self._offset)
                data = handle.read(size - self._offset)
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()  # b"" when the data ended with a newline
        events = []
        for raw in lines:
            if not raw.strip():
                continue
            try:
                event = parse_event_line(raw.decode("utf-8"))
            except UnicodeDecodeError:
                event = None
            if event is None:
                self.bad_lines += 1
            else:
                events.append(event)
        return events


@dataclass
class EpochRecord:
    """One finished epoch, for the training curves."""

    epoch: int
    loss: float
    val_auc: float
    val_dice: float
    val_accuracy: float


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class TrainingState:
    """The state of a training run as its progress events describe it.

    ``status`` is "waiting" (no event yet), "running", "done", "cancelled" or "error".
    """

    status: str = "waiting"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    steps: int = 0
    loss: float = math.nan
    best_auc: float = math.nan
    eta_s: float = math.nan
    message: str = ""
    history: list[EpochRecord] = field(default_factory=list)
    #: Units of the model completion after the last epoch done so far, and in all (0: not begun).
    completing: int = 0
    completion_units: int = 0

    def update(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        for name in ("epoch", "epochs", "step", "steps"):
            if event.get(name) is not None:
                setattr(self, name, int(event[name]))
        for name in ("loss", "best_auc", "eta_s"):
            if event.get(name) is not None:
                setattr(self, name, _number(event[name]))
        if event.get("message"):
            self.message = str(event["message"])
        if kind in ("start", "resumed", "step"):
            self.status = "running"
        elif kind == "progress":  # the model completion after the last epoch
            self.status = "running"
            self.completing, self.completion_units = int(event.get("done") or 0), int(event.get("total") or 0)
        elif kind == "epoch":
            self.status = "running"
            record = EpochRecord(self.epoch, _number(event.get("loss")), _number(event.get("val_auc")),
                                 _number(event.get("val_dice")), _number(event.get("val_accuracy")))
            # A resumed run reports epochs again: keep the latest report of each epoch.
            self.history = [r for r in self.history if r.epoch != record.epoch] + [record]
        elif kind in ("done", "cancelled", "error"):
            self.status = kind

    @property
    def finished(self) -> bool:
        return self.status in ("done", "cancelled", "error")

    @property
    def fraction(self) -> float:
        """Share of the run done, 0 to 1, from finished epochs plus the current epoch's steps; once the
        epochs are done, the share of the model completion (temperature, lesion rule, input check, site
        report) done."""
        if self.status == "done":
            return 1.0
        if self.completion_units:
            return min(1.0, self.completing / self.completion_units)
        if not self.epochs:
            return 0.0
        finished_epochs = len(self.history)
        within = self.step / self.steps if self.steps else 0.0
        if self.history and self.history[-1].epoch == self.epoch:
            within = 0.0  # the current epoch's report is in: the next one has not started
        return min(1.0, (finished_epochs + within) / self.epochs)

    def summary(self) -> str:
        """One line for the status label, e.g. "Epoch 3/20, step 12/40 - loss 0.412 - val AUC 0.871"."""
        if self.status == "waiting":
            return "Starting training..."
        if self.completion_units and self.status == "running":
            best = f" - best AUC {self.best_auc:.3f}" if math.isfinite(self.best_auc) else ""
            return f"{self.message[:1].upper()}{self.message[1:]} ({self.completing}/{self.completion_units}){best}"
        parts = [f"Epoch {self.epoch}/{self.epochs}" if self.epochs else "Training"]
        if self.steps and self.status == "running":
            parts[0] += f", step {self.step}/{self.steps}"
        if math.isfinite(self.loss):
            parts.append(f"loss {self.loss:.3f}")
        if self.history:
            last = self.history[-1]
            if math.isfinite(last.val_auc):
                parts.append(f"val AUC {last.val_auc:.3f}")
            if math.isfinite(last.val_dice):
                parts.append(f"Dice {last.val_dice:.3f}")
        if math.isfinite(self.best_auc):
            parts.append(f"best AUC {self.best_auc:.3f}")
        if self.status == "running" and math.isfinite(self.eta_s) and self.eta_s > 0:
            parts.append(f"about {_duration(self.eta_s)} left")
        text = " - ".join(parts)
        if self.status in ("done", "cancelled", "error"):
            text = f"{self.status.capitalize()}: {text}"
            if self.status == "error" and self.message:
                text += f" ({self.message})"
        return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
