"""``mffmt export``: turn a model file into a TorchScript or ONNX file for deployment, and check it."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from MFFMTCore.commands.options import output_path
from MFFMTCore.errors import MFFMTError
from MFFMTCore.model_file import load_model, resolve_model_path
from MFFMTCore.network.export import EXPORT_FORMATS, export_difference, export_model

# Float32 outputs of the same graph on the same CPU agree far better than this; anything above
# means the export changed the computation.
TOLERANCE = 1e-3


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a model file to TorchScript or ONNX",
        description="Export an MFFMT model file to TorchScript (torch.jit.trace) or ONNX (opset 17, dynamic "
        "batch and size), then check that the exported model's outputs match PyTorch's on a random input.",
    )
    parser.add_argument("--model", help="model file (.safetensors); default: the installed default model")
    parser.add_argument("--output", required=True, type=output_path, help="exported file to write (.pt or .onnx)")
    parser.add_argument("--format", choices=EXPORT_FORMATS, default=None,
                        help="export format (default: onnx when --output ends in .onnx, else torchscript)")
    parser.add_argument("--input-size", type=int, default=None,
                        help="square size of the example input, a multiple of 32 (default: the model's input size)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    export_format = args.format or ("onnx" if output.suffix.lower() == ".onnx" else "torchscript")
    model_path = resolve_model_path(args.model)
    model, info = load_model(model_path)
    size = (args.input_size, args.input_size) if args.input_size else tuple(info.input_size)
    if any(side <= 0 or side % 32 for side in size):
        raise MFFMTError("--input-size", f"{size} must be a positive multiple of 32")
    export_model(model, output, export_format, size)
    check = torch.rand(2, model.architecture["in_channels"], *size)
    difference = export_difference(model, output, export_format, check)
    print(f"exported {model_path} to {output} ({export_format}, example input {size[0]}x{size[1]})")
    print(f"max abs difference to PyTorch on a random batch: {difference:.3g}")
    if difference > TOLERANCE:
        output.unlink(missing_ok=True)
        raise MFFMTError(output, f"exported outputs differ from PyTorch by {difference:.3g} (> {TOLERANCE}); removed")
    return 0
