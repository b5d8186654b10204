"""``mffmt train``: train an MFFMT network on BUSI/BUS-BRA folders or datalists.

Writes into RUN_DIR: model.safetensors (best by validation AUC), checkpoint.pt (last finished epoch),
progress.jsonl (one JSON event per line), history.json, training_curves.png, split.json and
config.json (the effective configuration). Ctrl-C, SIGTERM or the stop file (RUN_DIR/STOP) stop at
a safe point with exit status 0; ``--resume`` continues from checkpoint.pt. A folder holding an earlier
run is refused unless ``--resume`` or ``--overwrite`` (which deletes that run's files once the new
data has passed its checks); one run
at a time per folder (RUN_DIR/.mffmt.lock); temporary files of a save that a kill interrupted are
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

from MFFMTCore.commands.options import add_progress
from MFFMTCore.data.transforms import AUGMENTATIONS
from MFFMTCore.errors import MFFMTError
from MFFMTCore.training.config import TrainConfig, merge_config, read_config_file
from MFFMTCore.training.presets import PRESETS
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

PATH_OPTIONS = ("output", "init_model", "pretrained_backbone", "stop_file")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train", help="train an MFFMT network (checkpoints, resume, cancel, progress as JSON lines)",
        description=__doc__.replace("``", ""), epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    # Every default is None: unset options do not override the config file or the preset.
    data = parser.add_argument_group("data")
    data.add_argument("--data", action="append", metavar="PATH",
                      help="BUSI or BUS-BRA folder, or datalist (.json/.csv); repeat for several")
    data.add_argument("--output", metavar="RUN_DIR",
                      help="run folder (created; an earlier run in it is refused without --resume or --overwrite)")
    data.add_argument("--config", metavar="FILE.json", help="JSON file of option values")
    data.add_argument("--val-fraction", type=float, metavar="F",
                      help="share of near-duplicate groups / patients held out for validation (default 0.2)")
    data.add_argument("--mode", choices=("frame", "lesion"),
                      help="whole frames (default) or one crop per lesion box (the paper's protocol)")
    data.add_argument("--margin", type=float, help="context margin of lesion crops, fraction of the box (0.2)")
    data.add_argument("--input-size", type=int, metavar="S", help="network input side, multiple of 32")
    data.add_argument("--augment", choices=AUGMENTATIONS,
                      help="paper: random quarter turns and flips (default); lateral: left-right flips only; "
                           "scanner: lateral flips plus crops, gain/TGC, speckle, blur and synthetic calipers")
    data.add_argument("--num-workers", type=int, metavar="N", help="data-loading processes (default 0)")

    network = parser.add_argument_group("network")
    network.add_argument("--backbone", choices=("resnet18", "resnet50"), help="MFFMT18 (default) or MFFMT50")
    network.add_argument("--fusion", choices=("mff", "sum", "concat"), help="mff (default) or an ablation")
    network.add_argument("--ca", dest="use_ca", action=argparse.BooleanOptionalAction, help="coordinate attention")
    network.add_argument("--cbam", dest="use_cbam", action=argparse.BooleanOptionalAction, help="CBAM")
    network.add_argument("--decoder", action=argparse.BooleanOptionalAction,
                         help="full-resolution lesion decoder (--no-decoder: the paper's upsampled P_mask)")
    network.add_argument("--embed-dim", type=int, metavar="D", help="MFF token width (512 = the paper)")
    network.add_argument("--mlp-ratio", type=float, metavar="R", help="MFF MLP width ratio (3.0 = the paper)")
    network.add_argument("--aux", choices=("auto", "none"),
                         help="auto: BI-RADS head when the data carries BI-RADS (default)")
    network.add_argument("--init-model", metavar="MODEL", help="start from this model file (fine-tuning)")
    network.add_argument("--pretrained-backbone", metavar="WEIGHTS",
                         help="local torchvision ResNet weights for the backbone of a new network")

    recipe = parser.add_argument_group("recipe (defaults from the preset)")
    recipe.add_argument("--preset", choices=tuple(PRESETS),
                        help="cpu: AdamW 1e-3, warm-up + cosine, batch 16, 30 epochs, bf16 where native "
                             "(default); "
                             "paper: Adam 1e-5, 200 epochs, batch 8")
    recipe.add_argument("--epochs", type=int, metavar="N")
    recipe.add_argument("--lr", type=float, metavar="LR", help="peak learning rate")
    recipe.add_argument("--batch-size", type=int, metavar="B", help="samples per step (per process)")
    recipe.add_argument("--optimizer", choices=("adam", "adamw"))
    recipe.add_argument("--weight-decay", type=float, metavar="WD")
    recipe.add_argument("--schedule", choices=("constant", "cosine"))
    recipe.add_argument("--warmup-epochs", type=float, metavar="E")
    recipe.add_argument("--grad-clip", type=float, metavar="NORM", help="gradient norm clip; 0 turns it off")
    recipe.add_argument("--precision", choices=("fp32", "bf16", "auto"),
                        help="bf16: bfloat16 autocast for the training forward pass (about twice as fast on "
                             "CPUs with AVX512-BF16); auto: bf16 where native (cpu preset), else fp32")
    recipe.add_argument("--lambda-loc", type=float, metavar="L", help="weight of L_loc (paper's lambda)")
    recipe.add_argument("--seg-weight", type=float, metavar="W", help="weight of the segmentation loss (1.0)")
    recipe.add_argument("--aux-weight", type=float, metavar="W", help="weight of the BI-RADS loss (0.5)")
    recipe.add_argument("--seed", type=int, help="seed of split, initialisation and augmentation (0)")

    run_group = parser.add_argument_group("run")
    resume = run_group.add_mutually_exclusive_group()
    resume.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR from checkpoint.pt")
    resume.add_argument("--overwrite", action="store_true",
                        help="start a new run in RUN_DIR, deleting the earlier run's model, checkpoint, config, "
                             "split, history and curves (new progress events are appended)")
    run_group.add_argument("--device", choices=("cpu", "cuda"))
    run_group.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: available cores)")
    run_group.add_argument("--stop-file", metavar="FILE", help="stop when this file appears (default RUN_DIR/STOP)")
    add_progress(run_group, choices=("bar", "none"), default=None, old_bar_flags=True,
                 help="bar: a progress bar on stderr (default); none: no bar. The JSON events always go to "
                      "RUN_DIR/progress.jsonl (follow them with tail -f)")
    parser.set_defaults(run=run)


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
    names = TrainConfig.__dataclass_fields__
    given = _absolute({key: value for key, value in vars(args).items() if key in names and value is not None})
    if args.progress is not None:
        given["progress_bar"] = args.progress == "bar"
    from_file = read_config_file(args.config) if args.config else {}
    output = given.get("output") or from_file.get("output")
    if not output:
        raise MFFMTError("--output", "no run folder: give --output RUN_DIR")
    saved: dict[str, Any] = {}
    if args.resume:
        saved_path = Path(output) / "config.json"
        if not saved_path.is_file():
            raise MFFMTError(saved_path, f"not found; is {output} a training run folder?")
        saved = read_config_file(saved_path)
    return merge_config(saved, from_file, given)


def run(args: argparse.Namespace) -> int:
    status = Trainer(build_config(args), resume=args.resume, overwrite=args.overwrite).run()
    return 0 if status in ("done", "cancelled") else 1
