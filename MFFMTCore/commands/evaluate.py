"""``mffmt evaluate``: measure a model on labelled data (malignant is the positive class).

Writes into DIR: metrics.json (accuracy, precision, sensitivity, specificity, F1, AUC, Dice and the
false-lesion rate on lesion-free images; overall, per dataset and per scanner where known),
roc.png, confusion_matrix.png and predictions.csv (one row per image). Input size, intensity
scaling and sample mode come from the model file. Unreadable images are listed and skipped; the
exit status is then 1.
"""

from __future__ import annotations

import argparse
import sys

import torch

from MFFMTCore.base.devices import available_cores
from MFFMTCore.commands.options import (
    Progress,
    add_device,
    add_malignancy_threshold,
    add_norm_adaptation,
    add_progress,
    add_threads,
    norm_adaptation,
    output_path,
    positive_int,
)
from MFFMTCore.evaluation.evaluate import evaluate, read_evaluation_records
from MFFMTCore.network.norm_adaptation import adaptation_text

EXAMPLES = """examples:
  mffmt evaluate --model runs/mffmt18/model.safetensors --data ../shared/data/busbra --output eval/busbra
  mffmt evaluate --model runs/mffmt18/model.safetensors --data ../shared/data/busi \\
      --data ../shared/data/busbra --split runs/mffmt18/split.json --output eval/validation"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate", help="measure a model on labelled data: metrics.json, ROC curve, confusion matrix",
        description=__doc__.replace("``", ""), epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", metavar="MODEL", help="model file (default: the model shipped with MFFMTCore)")
    parser.add_argument("--data", action="append", required=True, metavar="PATH",
                        help="BUSI or BUS-BRA folder, or datalist (.json/.csv); repeat for several")
    parser.add_argument("--output", required=True, type=output_path, metavar="DIR", help="output folder")
    parser.add_argument("--split", metavar="SPLIT_JSON",
                        help="evaluate only the validation images of a training run's split.json")
    parser.add_argument("--mode", choices=("frame", "lesion"), help="sample mode (default: the model's)")
    parser.add_argument("--margin", type=float, help="lesion-crop margin (default: the model's)")
    add_malignancy_threshold(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N")
    add_norm_adaptation(parser)
    add_device(parser)
    add_threads(parser, "torch CPU threads (default: available cores)")
    add_progress(parser, old_bar_flags=True)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads or available_cores())
    records = read_evaluation_records(args.data, args.split)
    progress = Progress(args.progress, total=len(records), unit="image", own_bar=False)  # evaluate() draws its bars
    progress.event("start", total=len(records), output=str(args.output))
    metrics = evaluate(args.model, records, args.output, mode=args.mode, margin=args.margin,
                       batch_size=args.batch_size, device=args.device,
                       malignancy_threshold=args.malignancy_threshold, progress=args.progress == "bar",
                       on_batch=lambda done, total: progress.event("progress", done=done, total=total),
                       adapt_norm=norm_adaptation(args))
    progress.close()
    overall = metrics["overall"]

    def show(value: float | None) -> str:
        return "n/a" if value is None else f"{value:.3f}"

    print(f"{metrics['samples']} images: AUC {show(overall['auc'])}, accuracy {show(overall['accuracy'])}, "
          f"sensitivity {show(overall['sensitivity'])}, specificity {show(overall['specificity'])}, "
          f"Dice {show(overall['dice'])}; written to {args.output}")
    if "norm_adaptation" in metrics:
        print(f"mffmt evaluate: {adaptation_text(metrics['norm_adaptation'])}", file=sys.stderr)
    for failure in metrics["failed"]:
        print(f"mffmt evaluate: skipped: {failure['error']}", file=sys.stderr)
    if metrics["duplicates"]:
        first = metrics["duplicates"][0]
        print(f"mffmt evaluate: note: {len(metrics['duplicates'])} duplicate entries counted once "
              f"(e.g. {first['image']} is {first['same_as']})", file=sys.stderr)
    progress.event("done", total=len(records), done=metrics["samples"], failed=len(metrics["failed"]),
                   output=str(args.output))
    return 1 if metrics["failed"] else 0
