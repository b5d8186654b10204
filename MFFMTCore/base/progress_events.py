"""The progress events of every long-running ``mffmt`` command, and how a reader finds them.

An event is one JSON object on one line. ``--progress json`` prints them on stdout (``mffmt predict``,
``evaluate``, ``fit-input-check``, ``live``); ``mffmt train`` always appends them to
``RUN_DIR/progress.jsonl``. The Slicer module, ``tail -f`` and scripts read them; lines that are not
events (warnings, logs, a redrawn progress bar) are skipped by :func:`parse_event_line`.

Every event has ``event`` (its kind, one of :data:`EVENT_KINDS`) and ``time`` (ISO-8601, UTC, to the
second); its other keys are among :data:`EVENT_FIELDS`, and undefined values are ``null``. Readers
ignore keys they do not know, so a command may add a key without breaking them.
"""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any

from MFFMTCore.base.jsonsafe import json_safe

#: Kind of each event -> when it is sent.
EVENT_KINDS: dict[str, str] = {
    "start": "the work begins (total: inputs or images; train: epochs and steps per epoch)",
    "resumed": "train continues a run from its checkpoint",
    "step": "train finished an optimisation step",
    "epoch": "train finished and validated an epoch",
    "progress": "one unit of work finished (predict: an input; evaluate: a batch; fit-input-check: a file; "
                "live: a status report; train: a unit of the model completion after the last epoch)",
    "done": "the work finished; its results are written",
    "cancelled": "the user stopped the work (Ctrl-C, SIGTERM, the stop file); what finished is kept",
    "error": "the work stopped on an error (message); what finished is kept",
}

#: Key of an event -> its meaning.
EVENT_FIELDS: dict[str, str] = {
    "event": "kind of the event",
    "time": "when it was sent, ISO-8601 UTC",
    "done": "units finished so far (predict: inputs done, skipped or failed; done event: inputs predicted; "
            "train: units of the model completion)",
    "total": "units of the whole work",
    "input": "the input file the event is about",
    "status": "what became of that input: done, skipped or failed (see INPUT_STATUSES)",
    "message": "why it failed, or a note for people",
    "skipped": "inputs left as an earlier run finished them",
    "failed": "inputs that failed",
    "output": "the output folder or file",
    "epoch": "train: the epoch (0 before the first)",
    "epochs": "train: epochs of the run",
    "step": "train: step within the epoch",
    "steps": "train: steps per epoch",
    "lr": "train: learning rate",
    "loss": "train: total loss", "loss_cls": "train: classification loss", "loss_loc": "train: L_loc",
    "loss_seg": "train: segmentation loss", "loss_aux": "train: BI-RADS loss",
    "val_auc": "train: validation AUC", "val_dice": "train: validation Dice",
    "val_accuracy": "train: validation accuracy", "val_loss": "train: validation loss",
    "val_sensitivity": "train: validation sensitivity", "val_specificity": "train: validation specificity",
    "val_false_lesion_rate": "train: share of lesion-free validation images given a lesion",
    "val_birads_accuracy": "train: validation BI-RADS accuracy (with a BI-RADS head)",
    "best_auc": "train: best validation AUC so far", "best_epoch": "train: epoch of the best AUC",
    "eta_s": "estimated seconds left",
    "connected": "live: connected to the OpenIGTLink server now",
    "connections": "live: connections made so far",
    "frames_received": "live: IMAGE frames received", "frames_segmented": "live: frames segmented and answered",
    "frames_dropped": "live: frames dropped because newer ones came", "frames_failed": "live: frames that failed",
    "messages_malformed": "live: messages that could not be read", "results_unsent": "live: results not sent",
}

#: Values of every command's ``--progress``: a bar for people, JSON events for programs, or nothing.
PROGRESS_CHOICES: tuple[str, ...] = ("bar", "json", "none")
#: What became of one input of mffmt predict (the ``status`` of its ``progress`` event).
INPUT_STATUSES: tuple[str, ...] = ("done", "skipped", "failed")
#: Kinds after which no event of the same work follows.
FINAL_KINDS: tuple[str, ...] = ("done", "cancelled", "error")


def make_event(kind: str, **fields: Any) -> dict[str, Any]:
    """One event: its kind, strict-JSON values (NaN becomes null) and the time.

    Args:
        kind: one of :data:`EVENT_KINDS`.
        fields: the event's other keys.

    Raises:
        KeyError: ``kind`` is not an event kind (a bug in the sender, not a user's error).
    """
    if kind not in EVENT_KINDS:
        raise KeyError(f"unknown progress event kind {kind!r}; known: {', '.join(EVENT_KINDS)}")
    return {"event": kind, **json_safe(fields),
            "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def event_line(event: dict[str, Any]) -> str:
    """The line that carries ``event``: compact strict JSON, without the newline."""
    return json.dumps(event, allow_nan=False, separators=(", ", ": "))


def parse_event_line(line: str) -> dict[str, Any] | None:
    """The event of one output line, or None when the line is not an event.

    A progress bar redraws a line with carriage returns; only the text after the last one counts.
    """
    text = line.rsplit("\r", 1)[-1].strip()
    if not text.startswith("{"):
        return None
    try:
        event = json.loads(text)
    except json.JSONDecodeError:
        return None
    return event if isinstance(event, dict) and isinstance(event.get("event"), str) else None
