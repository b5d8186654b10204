"""``mffmt fit-input-check``: store in a model file where breast B-mode frames lie in its feature space.

Runs the model on its training frames (the split it was trained with), fits the statistics of the
per-frame input check (see MFFMTCore.inference.input_check), measures on the validation frames the
share of breast frames it flags, and writes a copy of the model file holding the statistics. The
model file given is never changed. Prints the report (JSON) and writes it beside the output.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
from tqdm import tqdm

from MFFMTCore.evaluation.input_check_fit import fit_input_check
from MFFMTCore.io import write_text_atomic

EXAMPLES = """examples:
  mffmt fit-input-check MFFMTCore/models/mffmt18_default.safetensors --output /tmp/mffmt18_checked.safetensors
  mffmt fit-input-check runs/m/model.safetensors --data ../shared/data/busi --data ../shared/data/busbra \\
      --others "$(python -c 'import pydicom.data as d; print(d.get_testdata_file("examples_ybr_color.dcm"))')" \\
      --output runs/m/model_checked.safetensors"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "fit-input-check", help="fit the breast B-mode input check of a model file on its training data",
        description=__doc__.replace("``", ""), epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", metavar="MODEL", help="model file (read only)")
    parser.add_argument("--output", required=True, metavar="FILE", help="model file to write, with the statistics")
    parser.add_argument("--data", action="append", metavar="PATH",
                        help="dataset folder or datalist (repeat; default: the data the model was trained on)")
    parser.add_argument("--others", nargs="*", default=[], metavar="FILE",
                        help="files known not to be breast B-mode: the report says which frames are flagged")
    parser.add_argument("--max-train-frames", type=int, metavar="N", help="fit on at most N training images")
    parser.add_argument("--quantile", type=float, default=0.995,
                        help="quantile of the training frames' distances that becomes the limit (default 0.995)")
    parser.add_argument("--neighbours", type=int, default=20, metavar="K",
                        help="a frame's distance is its cosine distance to the K-th nearest training frame (default 20)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    if not 0.5 < args.quantile < 1.0:
        raise ValueError(f"--quantile must be in (0.5, 1), got {args.quantile}")
    if args.neighbours < 1:
        raise ValueError(f"--neighbours must be at least 1, got {args.neighbours}")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    bar = tqdm(unit="file", file=sys.stderr)
    report = fit_input_check(args.model, args.output, data=args.data, others=args.others,
                             max_train_frames=args.max_train_frames, quantile=args.quantile,
                             neighbours=args.neighbours, device=args.device,
                             progress=lambda _name: bar.update(1))
    bar.close()
    text = json.dumps(report, indent=1, allow_nan=False)
    write_text_atomic(f"{args.output}.input_check.json", text + "\n")
    print(text)
    return 0
