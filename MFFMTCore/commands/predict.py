"""``mffmt predict``: lesion segmentation and benign/malignant classification of images and clips.

For each input writes ``<stem>.seg.nrrd`` (Slicer segmentation), ``<stem>_probability.nrrd``,
``<stem>_overlay.png`` (``--outputs`` chooses among them), with ``--gradcam`` ``<stem>_gradcam.nrrd``,
with ``--dicom`` (or ``dicom`` in ``--outputs``) for DICOM inputs ``<stem>_seg.dcm`` and ``<stem>_sr.dcm``,
plus ``results.csv`` and ``results.json`` for all inputs (see :mod:`MFFMTCore.inference.batch` for folders, stems, reruns).
Exit status 0 when every input succeeded, 1 when some failed (listed on stderr), 2 for an error
that stops everything (no model, bad option, output folder unusable or in use by another run; checked
before the network runs), 130 when stopped with Ctrl-C. Inputs must be at least 32x32 pixels, as must
an ROI, and hold no NaN or infinite pixel.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict

import torch

from MFFMTCore.base.model_metadata import calibration_note
from MFFMTCore.base.progress_events import INPUT_STATUSES
from MFFMTCore.commands.options import (
    Progress,
    add_device,
    add_lesion_threshold,
    add_norm_adaptation,
    add_progress,
    add_threads,
    norm_adaptation,
    output_path,
    positive_int,
)
from MFFMTCore.devices import torch_device
from MFFMTCore.inference.batch import InputOutcome, check_output_folder, find_inputs, predict_files
from MFFMTCore.inference.imaging_region import IMAGING_REGION_CHOICES
from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS, OUTPUTS
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.network.norm_adaptation import adaptation_text


def _roi(text: str) -> tuple[int, int, int, int]:
    try:
        values = tuple(int(value) for value in text.split(","))
    except ValueError:
        values = ()
    if len(values) != 4 or values[2] <= 0 or values[3] <= 0:
        raise argparse.ArgumentTypeError(f"expected X,Y,W,H in pixels with W and H positive, got {text!r}")
    return values


def _outputs(text: str) -> list[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in OUTPUTS]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(OUTPUTS)}, got {text!r}")
    return names


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="segment lesions and classify them benign/malignant in images, clips and folders",
        description=__doc__.split("\n\n")[0] + " Inputs are only read; outputs are written atomically.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image or clip files (PNG, JPEG, NRRD, NIfTI, DICOM, ...) or folders (searched recursively)")
    parser.add_argument("--output", required=True, type=output_path, metavar="DIR", help="output folder")
    parser.add_argument("--model", metavar="MODEL", help="model file (default: the model shipped with MFFMTCore)")
    add_lesion_threshold(parser)
    parser.add_argument("--roi", type=_roi, metavar="X,Y,W,H",
                        help="classify only this pixel box of each frame (x = column, y = row; the paper's protocol)")
    parser.add_argument("--imaging-region", choices=IMAGING_REGION_CHOICES, default="auto",
                        help="where the scan is without --roi: auto = a DICOM file's calibrated ultrasound "
                             "region, else detected (borders, text and panels left out); dicom = the DICOM "
                             "region only; none = the whole frame")
    parser.add_argument("--outputs", type=_outputs, default=list(DEFAULT_OUTPUTS), metavar="LIST",
                        help=f"files to write per input, comma-separated, of {', '.join(OUTPUTS)} (default: "
                             f"{','.join(DEFAULT_OUTPUTS)}); results.csv and results.json are always written")
    parser.add_argument("--dicom", action="store_true",
                        help="add dicom to --outputs: for DICOM inputs also write <stem>_seg.dcm (DICOM Segmentation) and <stem>_sr.dcm "
                             "(DICOM Structured Report, TID 1500: class, probability, diameters, orientation), "
                             "referencing the input, for PACS")
    parser.add_argument("--gradcam", action="store_true", help="also write Grad-CAM maps of the malignant class")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo the inputs given even when an earlier run finished them (other inputs' rows are "
                             "kept), and replace files in their output names that predict did not write")
    add_device(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="frames per network call")
    add_norm_adaptation(parser)
    add_threads(parser, "CPU threads for torch (default: torch's choice); with several inputs, that many "
                        "network calls of one thread each run at once, beside reading and writing")
    add_progress(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    device = torch_device(args.device)  # a device this computer lacks is refused before any folder is made
    inputs = find_inputs(args.inputs, exclude=args.output)
    check_output_folder(args.output, overwrite=args.overwrite)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    predictor = Predictor(args.model, device=device, batch_size=args.batch_size)
    progress = Progress(args.progress, total=len(inputs), unit="input")
    progress.event("start", total=len(inputs), output=str(args.output))

    def report(outcome: InputOutcome, done: int, total: int) -> None:
        progress.advance(input=outcome.input, status=outcome.status, message=outcome.error)

    adaptation = norm_adaptation(args)
    if adaptation is not None:  # a pass over up to max_frames frames before the first output: say why it waits
        print(f"mffmt predict: adapting BatchNorm statistics to up to {adaptation.max_frames} frames of "
              f"{len(inputs)} input(s)", file=sys.stderr)
    try:
        summary = predict_files(predictor, inputs, args.output, threshold=args.lesion_threshold, roi=args.roi,
                                gradcam=args.gradcam, overwrite=args.overwrite, progress=report,
                                imaging_region=args.imaging_region,
                                outputs=[*args.outputs, *(["dicom"] if args.dicom else [])],
                                adapt_norm=adaptation)
    except KeyboardInterrupt:
        progress.close()
        progress.event("cancelled", done=progress.done, total=len(inputs), output=str(args.output))
        print("mffmt predict: stopped; finished inputs are in the results files", file=sys.stderr)
        return 130
    progress.close()
    counts = {status: sum(o.status == status for o in summary.outcomes) for status in INPUT_STATUSES}
    progress.event("done", total=len(inputs), **counts, output=str(args.output))
    if summary.norm_adaptation is not None:  # also in results.json's "settings"
        print(f"mffmt predict: {adaptation_text(summary.norm_adaptation)}", file=sys.stderr)
    note = calibration_note(asdict(predictor.info))  # also in results.json's "model"
    if note is not None:
        print(f"mffmt predict: note: {predictor.model_path} is {note}", file=sys.stderr)
    for outcome in summary.failed:
        print(f"mffmt predict: failed: {outcome.error}", file=sys.stderr)
    if summary.failed:
        print(f"mffmt predict: {counts['failed']} of {len(inputs)} inputs failed (see results.csv)", file=sys.stderr)
        return 1
    return 0
