"""``mffmt train``: train an MFFMT network on BUSI/BUS-BRA folders or datalists.

Writes into RUN_DIR: model.safetensors (best by validation AUC, or loss with --select loss;
completed at the end of the run with its temperature, lesion-present rule and input-check statistics
fitted on the validation patients), checkpoint.pt (last finished epoch), progress.jsonl (one JSON
event per line), history.json, training_curves.png, split.json and config.json (the effective
configuration). With --init-model (fine-tuning) the run takes the parent's input size, network and
recipe and the fine-tuning defaults (6 epochs, lr 2e-4, backbone frozen for the first epoch, best
epoch by validation loss, early stop after 3 epochs without improvement) unless given, and ends with
site_report.json and site_report.png: the parent and the new model on the validation patients.
Ctrl-C, SIGTERM or the stop file (RUN_DIR/STOP) stop at a safe point with exit status 0; ``--resume``
continues from checkpoint.pt. A folder holding an earlier run is refused unless ``--resume`` or
``--overwrite`` (which deletes that run's files once the new data has passed its checks); one run at
a time per folder (RUN_DIR/.mffmt.lock); temporary files of a save that a kill interrupted are
removed at the next start. The data must hold at least 2 benign and 2 malignant training images and
one of each for validation, all at least 32x32 pixels without NaN or infinite pixels; this is
checked before training starts. Under torchrun
(``torchrun --nproc_per_node N -m MFFMTCore train ...``) each process trains on its share of every
epoch (DistributedDataParallel; gloo on CPU, nccl on GPUs) and only rank 0 writes files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from MFFMTCore.base.fine_tuning import inherited_options
from MFFMTCore.base.model_metadata import read_model_metadata
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.base.train_options import GROUPS, OPTIONS, Option
from MFFMTCore.commands.options import add_progress
from MFFMTCore.errors import MFFMTError
from MFFMTCore.model_completion import complete_run
from MFFMTCore.training.config import PATH_OPTIONS, TrainConfig, merge_config, read_config_file
from MFFMTCore.training.trainer import Trainer

EXAMPLES = """examples:
  mffmt train --data ../shared/data/busi --data ../shared/data/busbra --output runs/mffmt18
  mffmt train --config configs/default_model.json --output runs/default
  mffmt train --output runs/mffmt18 --resume --epochs 40     # continue (and extend) a run
  touch runs/mffmt18/STOP                                      # stop it at the next step
  torchrun --nproc_per_node 2 --standalone -m MFFMTCore train --data DATA --output RUN_DIR

Option values: preset < --config FILE.json (keys are the option names with underscores, e.g.
"batch_size") < command line. On --resume the run's config.json is the base, so only what you
want to change needs to be given; a larger --epochs extends a run (the cosine schedule then stretches
to the new length)."""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an MFFMT network (checkpoints, resume, cancel, progress as JSON lines)",
        description=__doc__.replace("``", ""), epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    groups = {name: parser.add_argument_group(title) for name, title in GROUPS.items()}
    groups["data"].add_argument("--config", metavar="FILE.json", help="JSON file of option values")
    for declared in OPTIONS.values():
        if declared.command_line:
            groups[declared.group].add_argument(declared.flag, **_argument(declared))
    resume = groups["run"].add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoint.pt")
    resume.add_argument("--overwrite", action="store_true",
                        help="start a new run in RUN_DIR, deleting the earlier run's model, checkpoint, config, "
                             "split, history and curves (new progress events are appended)")
    add_progress(groups["run"], choices=("bar", "none"), default=None, old_bar_flags=True,
                 help="bar: a progress bar on stderr (default); none: no bar. The JSON events always go to "
                      "RUN_DIR/progress.jsonl (follow them with tail -f)")
    parser.set_defaults(run=run)


def _argument(declared: Option) -> dict[str, Any]:
    """``add_argument``'s keywords for a declared option. Every default is None: an unset option does
    not override the config file or the preset."""
    default = declared.default_text()
    keywords: dict[str, Any] = {"dest": declared.name, "default": None,
                                "help": declared.help + (f" (default: {default})" if default != "-" else "")}
    if declared.kind is bool:
        keywords["action"] = argparse.BooleanOptionalAction
    elif declared.kind is list:
        keywords.update(action="append", metavar=declared.metavar)
    else:
        keywords.update(type=declared.kind, choices=declared.choices, metavar=declared.metavar)
    return keywords


def _absolute(values: dict[str, Any]) -> dict[str, Any]:
    """Paths made absolute, so config.json works from any folder and on --resume."""
    values = dict(values)
    if values.get("data"):
        values["data"] = [str(Path(item).absolute()) for item in values["data"]]
    for key in PATH_OPTIONS:
        if values.get(key):
            values[key] = str(Path(values[key]).absolute())
    return values


def build_config(args: argparse.Namespace) -> TrainConfig:
    """The run's configuration from the saved run config (on --resume), --config and the command line."""
    given = _absolute({key: value for key, value in vars(args).items() if key in OPTIONS and value is not None})
    if args.progress is not None:
        given["progress_bar"] = args.progress == "bar"
    from_file = read_config_file(args.config) if args.config else {}
    output = given.get("output") or from_file.get("output")
    if not output:
        raise MFFMTError("--output", OPTIONS["output"].required)
    saved: dict[str, Any] = {}
    if args.resume:
        folder = RunFolder(output)
        if not folder.config.is_file():
            raise MFFMTError(folder.config, f"not found; is {output} a training run folder?")
        saved = read_config_file(folder.config)
    parent = given.get("init_model") or from_file.get("init_model")
    # A fine-tuning run starts from its parent's input size, architecture and recipe (a resumed run
    # has them in its saved config already).
    inherited = inherited_options(read_model_metadata(parent)) if parent and not args.resume else {}
    return merge_config(saved, inherited, from_file, given)


def run(args: argparse.Namespace) -> int:
    status = Trainer(build_config(args), resume=args.resume, overwrite=args.overwrite, finish=complete_run).run()
    return 0 if status in ("done", "cancelled") else 1
