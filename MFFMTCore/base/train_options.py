"""The options of ``mffmt train``, declared once: name, type, default, range, choices and help.

:class:`TrainOptions` is the declaration, one field per option. Everything else is derived from it:

- :class:`MFFMTCore.training.config.TrainConfig` is ``TrainOptions`` plus the preset's values and
  the network's arguments; a config file's keys are the field names;
- validation: :meth:`TrainOptions.check` and :meth:`Option.check` (one-line
  :class:`~MFFMTCore.errors.MFFMTError` naming the option), also used by the Slicer module's command
  builder before it starts a process;
- the ``mffmt train`` command line (:func:`MFFMTCore.commands.train.add_parser`) and its inverse,
  the argument list the Slicer module builds (:meth:`Option.arguments`);
- the Slicer panel's tooltips, and the option table in README.md (:func:`option_table`, checked by
  a test).

Adding an option is one field here (with :func:`option`) and its use. Choices come from
:mod:`MFFMTCore.base.choices` and :data:`MFFMTCore.base.presets.PRESETS`. No torch: the Slicer module
imports this in Slicer's own Python.
"""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from MFFMTCore.base.choices import (
    AUGMENTATIONS,
    AUX_MODES,
    BACKBONES,
    FUSION_CHOICES,
    OPTIMIZERS,
    PRECISIONS,
    SAMPLE_MODES,
    SCHEDULES,
    SELECTIONS,
)
from MFFMTCore.base.devices import AUTO, DEVICE_CHOICES, DEVICE_HELP, threads_problem
from MFFMTCore.base.presets import PRESETS
from MFFMTCore.errors import MFFMTError

#: Option groups, in the order ``mffmt train --help`` shows them, with their titles.
GROUPS = {"data": "data", "network": "network", "recipe": "recipe (defaults from the preset)", "run": "run"}
_KIND_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a text",
               list: "a list of texts"}


@dataclass(frozen=True)
class Range:
    """The numbers an option accepts: bounds (open or closed) and a step.

    Args:
        low, high: the bounds; None leaves that side unbounded.
        low_open, high_open: exclude the bound itself.
        multiple_of: the value must be a multiple of this.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    multiple_of: int | None = None

    def describe(self) -> str:
        """The range in words and symbols, e.g. ``"> 0, a multiple of 32"``."""
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        text = " and ".join(parts)
        if self.multiple_of:
            text += f", a multiple of {self.multiple_of}"
        return text

    def problem(self, value: float) -> str | None:
        """What is wrong with ``value``, or None when it is in the range."""
        if not math.isfinite(value):
            return f"must be a finite number, not {value}"
        below = self.low is not None and (value < self.low or (self.low_open and value == self.low))
        above = self.high is not None and (value > self.high or (self.high_open and value == self.high))
        if below or above or (self.multiple_of and value % self.multiple_of):
            return f"must be {self.describe()}, not {value}"
        return None


POSITIVE = Range(low=0, low_open=True)
NON_NEGATIVE = Range(low=0)


@dataclass(frozen=True)
class Option:
    """One option of ``mffmt train``, as :class:`TrainOptions` declares it.

    Args:
        name: the field name (config files use it); the flag is ``--`` and the name with dashes.
        kind: ``bool``, ``int``, ``float``, ``str`` or ``list`` (of texts).
        default: the value when nothing sets it; None for a preset option (the preset fills it).
        help: one sentence for ``--help``, the README and the Slicer panel's tooltip.
        group: one of :data:`GROUPS`.
        optional: None is a valid value (e.g. no model to start from).
        choices: the allowed values.
        range: the allowed numbers.
        metavar: the value's name in ``--help``.
        flag: the command-line flag, when it is not derived from the name.
        path: a file or folder (made absolute before it reaches another working folder).
        preset: the preset gives the default (:data:`MFFMTCore.base.presets.PRESETS`).
        required: the problem to report when the option is empty; None when it may be.
        command_line: the ``train`` command declares the option itself (its spelling is shared with
            the other commands).
    """

    name: str
    kind: type
    default: Any
    help: str
    group: str
    optional: bool = False
    choices: tuple[str, ...] | None = None
    range: Range | None = None
    metavar: str | None = None
    flag: str = ""
    path: bool = False
    preset: bool = False
    required: str | None = None
    command_line: bool = True

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this option, or None."""
        if value is None:
            return None if self.optional else "is not set"
        fits = {bool: lambda: isinstance(value, bool),
                int: lambda: isinstance(value, int) and not isinstance(value, bool),
                float: lambda: isinstance(value, (int, float)) and not isinstance(value, bool),
                str: lambda: isinstance(value, str),
                list: lambda: isinstance(value, list) and all(isinstance(item, str) for item in value)}[self.kind]
        if not fits():
            return f"must be {_KIND_WORDS[self.kind]}, not {value!r}"
        if self.required and not value:
            return self.required
        if self.choices is not None and value not in self.choices:
            return f"must be one of {', '.join(self.choices)}, not {value!r}"
        return self.range.problem(value) if self.range is not None else None

    def check(self, value: Any) -> None:
        """Raise :class:`~MFFMTError` (``"--flag: problem"``) when ``value`` cannot work."""
        problem = self.problem(value)
        if problem is not None:
            raise MFFMTError(self.flag, problem)

    def arguments(self, value: Any) -> list[str]:
        """The command-line arguments that give this option ``value`` (the inverse of the parser).

        A list becomes one ``--flag=ITEM`` per item, so an item that starts with ``-`` is never
        taken for an option.
        """
        if self.kind is bool:
            return [self.flag if value else "--no-" + self.flag.removeprefix("--")]
        if self.kind is list:
            return [f"{self.flag}={item}" for item in value]
        return [self.flag, repr(float(value)) if self.kind is float else str(value)]

    def default_text(self) -> str:
        """The default as ``--help`` and the README show it."""
        if self.preset:
            return "; ".join(f"{name}: {_preset_text(values[self.name])}" for name, values in PRESETS.items())
        if self.kind is bool:
            return "on" if self.default else "off"
        return "-" if self.default in (None, "", []) else str(self.default)

    def values_text(self) -> str:
        """The accepted values in words, for the README."""
        if self.choices is not None:
            return ", ".join(self.choices)
        words = {bool: "on/off", int: "whole number", float: "number", str: "text", list: "paths"}[self.kind]
        if self.path and self.kind is str:
            words = "path"
        return f"{words} {self.range.describe()}" if self.range is not None else words


def _preset_text(value: Any) -> str:
    if isinstance(value, dict):  # by backbone
        return ", ".join(f"{key} {item:g}" for key, item in value.items())
    return f"{value:g}" if isinstance(value, float) else str(value)


def option(default: Any, help: str, group: str, **details: Any) -> Any:
    """A :class:`TrainOptions` field; ``details`` are :class:`Option`'s other arguments."""
    metadata = {"option": {"help": help, "group": group, **details}}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class TrainOptions:
    """The options of one training run (``RUN_DIR/config.json``); see :data:`OPTIONS` for each."""

    # data
    data: list[str] = option([], "BUSI or BUS-BRA folder, or datalist (.json/.csv); repeat for several",
                             "data", metavar="PATH", path=True,
                             required="no training data; give --data PATH (a dataset folder or a datalist file)")
    output: str = option("", "run folder (created; an earlier run in it is refused without --resume or "
                             "--overwrite)", "data", metavar="RUN_DIR", path=True,
                         required="no run folder; give --output RUN_DIR")
    val_fraction: float = option(0.2, "share of near-duplicate groups / patients / clips held out for "
                                      "validation (it chooses the best epoch)", "data", metavar="F",
                                 range=Range(0, 1, low_open=True, high_open=True))
    mode: str = option("frame", "whole frames, or one crop per lesion box (the paper's protocol)", "data",
                       choices=SAMPLE_MODES)
    margin: float = option(0.2, "context margin of lesion crops, as a fraction of the box", "data",
                           range=NON_NEGATIVE)
    input_size: int | None = option(None, "side of the square network input", "data", metavar="S",
                                    range=Range(low=0, low_open=True, multiple_of=32), preset=True)
    augment: str = option("paper", "paper: random quarter turns and flips; lateral: left-right flips only "
                                   "(keeps the depth axis); scanner: lateral flips plus crops, gain/TGC, speckle, "
                                   "blur and synthetic calipers", "data", choices=AUGMENTATIONS)
    num_workers: int = option(0, "data-loading processes (0 loads in the training process)", "data",
                              metavar="N", range=NON_NEGATIVE)
    # network
    backbone: str = option("resnet18", "resnet18 (MFFMT18) or resnet50 (MFFMT50)", "network", choices=BACKBONES)
    fusion: str = option("mff", "feature fusion: mff (the paper) or an ablation", "network", choices=FUSION_CHOICES)
    use_ca: bool = option(True, "coordinate attention", "network", flag="--ca")
    use_cbam: bool = option(True, "CBAM attention", "network", flag="--cbam")
    decoder: bool = option(True, "full-resolution lesion decoder (off: the paper's upsampled P_mask)", "network")
    embed_dim: int = option(512, "MFF token width (512 = the paper)", "network", metavar="D", range=POSITIVE)
    mlp_ratio: float = option(3.0, "MFF MLP width ratio (3.0 = the paper)", "network", metavar="R", range=POSITIVE)
    aux: str = option("auto", "auto: a BI-RADS head when the data carries BI-RADS", "network", choices=AUX_MODES)
    init_model: str | None = option(None, "start from this model file (fine-tuning)", "network", metavar="MODEL",
                                    path=True)
    pretrained_backbone: str | None = option(None, "local torchvision ResNet weights (.pth or .safetensors) for "
                                                   "the backbone of a new network", "network", metavar="WEIGHTS",
                                             path=True)
    # recipe
    preset: str = option("cpu", "cpu: AdamW, warm-up + cosine, bf16 where native; paper: the paper's Adam "
                                "recipe", "recipe", choices=tuple(PRESETS))
    epochs: int | None = option(None, "passes over the training data", "recipe", metavar="N", range=POSITIVE,
                                preset=True)
    lr: float | None = option(None, "peak learning rate", "recipe", metavar="LR", range=POSITIVE, preset=True)
    batch_size: int | None = option(None, "samples per optimisation step (per process)", "recipe", metavar="B",
                                    range=POSITIVE, preset=True)
    optimizer: str | None = option(None, "adam, or adamw (decoupled weight decay)", "recipe", choices=OPTIMIZERS,
                                   preset=True)
    weight_decay: float | None = option(None, "weight decay of weights (not of biases and norms)", "recipe",
                                        metavar="WD", range=NON_NEGATIVE, preset=True)
    schedule: str | None = option(None, "learning rate after the warm-up", "recipe", choices=SCHEDULES,
                                  preset=True)
    warmup_epochs: float | None = option(None, "linear warm-up length in epochs (may be fractional)", "recipe",
                                         metavar="E", range=NON_NEGATIVE, preset=True)
    grad_clip: float | None = option(None, "clip the gradient norm at this value; 0 turns it off", "recipe",
                                     metavar="NORM", range=NON_NEGATIVE, preset=True)
    precision: str | None = option(None, "bf16: bfloat16 autocast for the training forward pass (about twice "
                                         "as fast on CPUs with AVX512-BF16); auto: bf16 where native, else fp32",
                                   "recipe", choices=PRECISIONS, preset=True)
    lambda_loc: float | None = option(None, "weight of the lesion-perception loss L_loc (the paper's lambda)",
                                      "recipe", metavar="L", range=NON_NEGATIVE, preset=True)
    seg_weight: float = option(1.0, "weight of the full-resolution segmentation loss", "recipe", metavar="W",
                               range=NON_NEGATIVE)
    aux_weight: float = option(0.5, "weight of the auxiliary (BI-RADS) loss", "recipe", metavar="W",
                               range=NON_NEGATIVE)
    label_smoothing: float = option(0.0, "label smoothing of the benign/malignant cross-entropy: the target "
                                         "puts this share evenly on both classes (0.1 curbs over-confident "
                                         "probabilities); 0 turns it off", "recipe", metavar="EPS",
                                    range=Range(0, 1, high_open=True))
    freeze_epochs: int = option(0, "epochs at the start during which the backbone (the encoder) does not move: "
                                   "the heads adapt first, so a small site's data does not scramble the "
                                   "features the model starts from (fine-tuning default: 1)", "recipe",
                                metavar="N", range=NON_NEGATIVE)
    patience: int = option(0, "stop when the validation loss has not improved for this many epochs; 0 never "
                              "stops early (fine-tuning default: 3)", "recipe", metavar="N", range=NON_NEGATIVE)
    select: str = option("auc", "how the best epoch is chosen: auc (validation AUC, then Dice, then loss) or loss "
                                "(validation loss: steadier on a small validation set; the fine-tuning default)",
                         "recipe", choices=SELECTIONS)
    seed: int = option(0, "seed of the split, initialisation and augmentation", "recipe")
    # run
    device: str = option(AUTO, DEVICE_HELP + " (cuda: one GPU per process)", "run", choices=DEVICE_CHOICES)
    threads: int | None = option(None, "torch CPU threads (default: the cores available to this process)", "run",
                                 metavar="N", range=POSITIVE)
    stop_file: str | None = option(None, "stop at a safe point when this file appears (default RUN_DIR/STOP)",
                                   "run", metavar="FILE", path=True)
    progress_bar: bool = option(True, "tqdm bar in the terminal", "run", command_line=False)

    def check(self) -> None:
        """Raise :class:`~MFFMTError` naming the first option whose value cannot work."""
        for name, declared in OPTIONS.items():
            declared.check(getattr(self, name))
        if self.threads is not None and threads_problem(self.threads) is not None:
            raise MFFMTError(OPTIONS["threads"].flag, threads_problem(self.threads))

    def to_json(self) -> str:
        """The options as strict JSON (the content of ``RUN_DIR/config.json``)."""
        return json.dumps(asdict(self), indent=2, sort_keys=True, allow_nan=False)


def _kind(hint: Any) -> tuple[type, bool]:
    """(kind, None allowed) of a field's type hint, e.g. ``float | None`` -> (float, True)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        kinds = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return _kind(kinds[0])[0], True
    return (typing.get_origin(hint) or hint), False


def _declared() -> dict[str, Option]:
    hints = typing.get_type_hints(TrainOptions)
    options = {}
    for item in fields(TrainOptions):
        details = dict(item.metadata["option"])
        kind, none_allowed = _kind(hints[item.name])
        # None is a value for an optional option; for a preset option it only means "not set yet".
        details["optional"] = details.get("optional", none_allowed and not details.get("preset", False))
        details.setdefault("flag", "--" + item.name.replace("_", "-"))
        default = item.default if item.default is not MISSING else item.default_factory()
        options[item.name] = Option(name=item.name, kind=kind, default=default, **details)
    return options


#: Every option by name, in the order of ``--help``.
OPTIONS: dict[str, Option] = _declared()
TrainOptions.__doc__ += "\n\n    Args:\n" + "".join(f"        {name}: {declared.help}.\n"
                                                   for name, declared in OPTIONS.items())


def option_table() -> str:
    """The Markdown table of the options (README.md holds it; a test checks that it is current).
    Options the command declares itself (shared with the other commands) are documented there."""
    lines = ["| Option | Values | Default | What it sets |", "| --- | --- | --- | --- |"]
    for declared in (declared for declared in OPTIONS.values() if declared.command_line):
        flag = declared.flag if declared.kind is not bool else f"{declared.flag} / --no-{declared.flag[2:]}"
        lines.append(f"| `{flag}` | {declared.values_text()} | {declared.default_text()} | {declared.help} |")
    return "\n".join(lines) + "\n"
