"""The options that mean the same in every ``mffmt`` command, defined once, and how progress is shown.

Vocabulary (the same word never means two things):

- ``--lesion-threshold P``: lesion probability from which a pixel belongs to the lesion map
  (predict, live; default: the model's).
- ``--malignancy-threshold P``: malignancy probability from which a case is called malignant
  (evaluate; default 0.5).
- ``--adapt-norm``, ``--adapt-prior N``: adapt the network's BatchNorm statistics to the frames of
  the run, taken as one scanner's (predict, evaluate; off by default).
- ``--progress {bar,json,none}``: how long work reports progress: ``bar`` a bar (or status lines) for
  people on stderr, ``json`` one event per line on stdout (:mod:`MFFMTCore.base.progress_events`),
  ``none`` nothing. ``mffmt train`` always writes its events to ``RUN_DIR/progress.jsonl``.

Values are checked in one way: an option's ``type`` refuses a bad value while the command line is
parsed (usage message, exit status 2); a problem that needs more than the value (a file, another
option) is an :class:`MFFMTCore.errors.MFFMTError` from the command.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from MFFMTCore.base.devices import AUTO, DEVICE_CHOICES, DEVICE_HELP, threads_problem
from MFFMTCore.base.progress_bar import progress_bar
from MFFMTCore.base.progress_events import PROGRESS_CHOICES, event_line, make_event
from MFFMTCore.base.thresholds import threshold_problem

#: The shared options, for ``mffmt --help``.
VOCABULARY = """options that mean the same in every command:
  --lesion-threshold P      lesion probability from which a pixel is lesion (predict, live)
  --malignancy-threshold P  malignancy probability from which a case is called malignant (evaluate)
  --progress bar|json|none  a bar on stderr, one JSON event per line on stdout, or nothing
                            (predict, evaluate, fit-input-check, live; train: bar|none, its events
                            always go to RUN_DIR/progress.jsonl)
events: JSON objects with "event" (start, progress, done, cancelled, error; train also resumed,
  step, epoch) and "time"; see MFFMTCore/base/progress_events.py"""


def probability(text: str) -> float:
    """A threshold: a probability strictly between 0 and 1 (:mod:`MFFMTCore.base.thresholds`)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(threshold_problem(text)) from None
    problem = threshold_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def positive_int(text: str) -> int:
    """A whole number of at least 1."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive whole number, got {text!r}")
    return int(text)


def output_path(text: str) -> str:
    """A file or folder to write: not empty (``--output=`` would otherwise mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected a file or folder name, got {text!r}")
    return text


def thread_count(text: str) -> int:
    """Torch CPU threads: a whole number from 1 to :data:`~MFFMTCore.base.devices.THREADS_PER_CORE` x the
    usable cores."""
    value = positive_int(text)
    problem = threads_problem(value)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return value


def add_threads(parser: argparse.ArgumentParser, help: str) -> None:
    """``--threads N`` (``args.threads``, None = the command's default)."""
    parser.add_argument("--threads", type=thread_count, metavar="N", help=help)


def add_device(parser: argparse.ArgumentParser) -> None:
    """``--device`` (``args.device``): a :data:`~MFFMTCore.base.devices.DEVICE_CHOICES` value, ``auto`` by default;
    :func:`MFFMTCore.devices.torch_device` turns it into the device or refuses it in one line."""
    parser.add_argument("--device", choices=DEVICE_CHOICES, default=AUTO, help=f"{DEVICE_HELP} (default {AUTO})")


def float_between(low: float, high: float) -> Callable[[str], float]:
    """A type for a number strictly between ``low`` and ``high``."""

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = low
        if not low < value < high:
            raise argparse.ArgumentTypeError(f"expected a number between {low:g} and {high:g}, got {text!r}")
        return value

    convert.__name__ = f"number in ({low:g}, {high:g})"
    return convert


def non_negative_float(text: str) -> float:
    """A number of 0 or more (``inf`` allowed)."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number of 0 or more, got {text!r}")
    return value


def add_norm_adaptation(parser: argparse.ArgumentParser) -> None:
    """``--adapt-norm`` and ``--adapt-prior`` (read back with :func:`norm_adaptation`)."""
    # Imported here: the options module stays free of torch for commands that do not need it.
    from MFFMTCore.network.norm_adaptation import DEFAULT_PRIOR, MAX_FRAMES, MIN_FRAMES

    parser.add_argument("--adapt-norm", action="store_true",
                        help="test-time adaptation: the inputs are frames of one scanner; blend the network's "
                             "BatchNorm statistics with theirs before predicting (from up to "
                             f"{MAX_FRAMES} frames spread over the inputs; with fewer than {MIN_FRAMES} frames "
                             "nothing is adapted). See MODEL_CARD.md, 'Test-time adaptation'")
    parser.add_argument("--adapt-prior", type=non_negative_float, default=DEFAULT_PRIOR, metavar="N",
                        help=f"with --adapt-norm: weight of the model's own statistics, in frames (default "
                             f"{DEFAULT_PRIOR:g}; 0: the inputs' statistics alone)")


def norm_adaptation(args: argparse.Namespace) -> Any:
    """The :class:`~MFFMTCore.network.norm_adaptation.NormAdaptation` that ``args`` ask for, or None."""
    from MFFMTCore.network.norm_adaptation import NormAdaptation

    return NormAdaptation(prior_strength=args.adapt_prior) if args.adapt_norm else None


class _RenamedOption(argparse.Action):
    """An old spelling that still works, with a warning naming the new one."""

    def __init__(self, option_strings: Sequence[str], dest: str, new_name: str = "", **kwargs: Any) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"{parser.prog}: warning: {option_string} is deprecated; use {self.new_name}", file=sys.stderr)
        setattr(namespace, self.dest, values if self.const is None else self.const)


def add_lesion_threshold(parser: argparse.ArgumentParser) -> None:
    """``--lesion-threshold`` (``args.lesion_threshold``, None = the model's); ``--threshold`` is its old name."""
    parser.add_argument("--lesion-threshold", type=probability, metavar="P",
                        help="lesion probability from which a pixel is lesion (default: the model's)")
    parser.add_argument("--threshold", dest="lesion_threshold", type=probability, action=_RenamedOption,
                        new_name="--lesion-threshold", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_malignancy_threshold(parser: argparse.ArgumentParser, default: float = 0.5) -> None:
    """``--malignancy-threshold`` (``args.malignancy_threshold``); ``--threshold`` is its old name."""
    parser.add_argument("--malignancy-threshold", type=probability, default=default, metavar="P",
                        help=f"malignancy probability from which a case is called malignant (default {default:g})")
    parser.add_argument("--threshold", dest="malignancy_threshold", type=probability, action=_RenamedOption,
                        new_name="--malignancy-threshold", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_progress(parser: argparse.ArgumentParser | argparse._ArgumentGroup, choices: Sequence[str] = PROGRESS_CHOICES,
                 default: str | None = "bar", help: str | None = None, old_bar_flags: bool = False) -> None:
    """``--progress`` (``args.progress``): one of :data:`PROGRESS_CHOICES` (or a subset of them).

    Args:
        parser: the command's parser or one of its groups.
        choices: the values this command offers.
        default: the value when the option is not given.
        help: the help text, when the command's values need more words than the usual one.
        old_bar_flags: also accept ``--progress-bar``/``--no-progress-bar`` (the old spelling of
            ``--progress bar``/``none`` in train and evaluate), with a warning.
    """
    unknown = set(choices) - set(PROGRESS_CHOICES)
    if unknown:
        raise KeyError(f"progress choices {sorted(unknown)} are not part of the vocabulary {PROGRESS_CHOICES}")
    parser.add_argument("--progress", choices=tuple(choices), default=default, help=help or (
        "bar: a progress bar on stderr (default); json: one JSON event per line on stdout; none: nothing"))
    if old_bar_flags:
        for flag, value in (("--progress-bar", "bar"), ("--no-progress-bar", "none")):
            parser.add_argument(flag, dest="progress", nargs=0, const=value, action=_RenamedOption,
                                new_name=f"--progress {value}", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


class Progress:
    """Progress of a command's work as :func:`add_progress` chose: a tqdm bar, JSON events or nothing.

    Args:
        mode: ``"bar"``, ``"json"`` or ``"none"``.
        total: units of the whole work, when known.
        unit: what one unit is, for the bar.
        own_bar: False when the work draws its own bars (only the events are sent from here).
        stream: where JSON events go (stdout).
    """

    def __init__(self, mode: str, total: int | None = None, unit: str = "input", own_bar: bool = True,
                 stream: Any = None) -> None:
        self.mode = mode
        self.total = total
        self.done = 0
        self.stream = stream if stream is not None else sys.stdout
        self.bar = progress_bar(total=total, unit=unit, disable=mode != "bar" or not own_bar, file=sys.stderr,
                                dynamic_ncols=True)

    def event(self, kind: str, **fields: Any) -> None:
        """Send one event (``--progress json`` only)."""
        if self.mode == "json":
            print(event_line(make_event(kind, **fields)), file=self.stream, flush=True)

    def advance(self, units: int = 1, **fields: Any) -> None:
        """``units`` more are finished: move the bar, or send a ``progress`` event with ``fields``."""
        self.done += units
        self.bar.update(units)
        self.event("progress", done=self.done, total=self.total, **fields)

    def close(self) -> None:
        self.bar.close()
