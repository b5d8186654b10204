"""Export of a trained MFFMT for deployment: TorchScript (trace) or ONNX, checked against PyTorch.

Exported models take one input ``image`` (B, in_channels, H, W) and return a flat tuple:
``class_logits, mask_logits, coarse_mask_logits`` and then one logit tensor per auxiliary head in
name order (``aux_<name>``). H and W may differ from the export size if they are multiples of 32.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import atomic_path
from MFFMTCore.network.mffmt import MFFMT

EXPORT_FORMATS = ("torchscript", "onnx")
ONNX_OPSET = 17


class MFFMTExportWrapper(nn.Module):
    """Wrap an :class:`MFFMT` so that it returns a flat tuple of tensors (what tracing and ONNX need).

    Args:
        model: the network to wrap.
    """

    def __init__(self, model: MFFMT) -> None:
        super().__init__()
        self.model = model
        self.aux_names = sorted(model.aux_heads.keys())
        self.train(model.training)

    @property
    def output_names(self) -> list[str]:
        return ["class_logits", "mask_logits", "coarse_mask_logits"] + [f"aux_{name}" for name in self.aux_names]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        output = self.model(x)
        aux = tuple(output.aux_logits[name] for name in self.aux_names)
        return (output.class_logits, output.mask_logits, output.coarse_mask_logits) + aux


@contextmanager
def _quiet_deprecations() -> Iterator[None]:
    """Silence torch's DeprecationWarnings for TorchScript and the TorchScript-based ONNX exporter.

    Both still work in torch 2.13 and are what deployment runtimes (LibTorch, onnxruntime) load;
    their successors need torch.export-compatible code and, for ONNX, the onnxscript package.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        yield


def export_model(
    model: MFFMT, path: str | os.PathLike, export_format: str = "torchscript", input_size: tuple[int, int] = (256, 256)
) -> Path:
    """Export ``model`` (put in eval mode) to ``path`` atomically.

    Args:
        model: the network.
        path: destination file (``.pt`` for TorchScript, ``.onnx`` for ONNX by convention).
        export_format: ``"torchscript"`` (``torch.jit.trace``) or ``"onnx"`` (opset 17, dynamic batch,
            height and width).
        input_size: (H, W) of the example input used for tracing; multiples of 32.
    """
    if export_format not in EXPORT_FORMATS:
        raise MFFMTError("--format", f"must be one of {EXPORT_FORMATS}, got {export_format!r}")
    model.eval()
    wrapper = MFFMTExportWrapper(model).eval()
    example = torch.rand(1, model.architecture["in_channels"], *input_size, device=next(model.parameters()).device)
    path = Path(path)
    with atomic_path(path) as temporary, torch.no_grad(), _quiet_deprecations():
        if export_format == "torchscript":
            torch.jit.save(torch.jit.trace(wrapper, example), str(temporary))
        else:
            dynamic = {name: {0: "batch"} for name in wrapper.output_names}
            dynamic["image"] = dynamic["mask_logits"] = {0: "batch", 2: "height", 3: "width"}
            dynamic["coarse_mask_logits"] = {0: "batch", 2: "height_32", 3: "width_32"}
            torch.onnx.export(
                wrapper, (example,), str(temporary), dynamo=False, opset_version=ONNX_OPSET,
                input_names=["image"], output_names=wrapper.output_names, dynamic_axes=dynamic,
            )
    return path


def run_exported(path: str | os.PathLike, export_format: str, x: torch.Tensor) -> list[np.ndarray]:
    """Run an exported model on ``x`` (CPU) and return its outputs as arrays, in export order."""
    if export_format == "torchscript":
        with _quiet_deprecations():
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return [tensor.numpy() for tensor in module(x.cpu())]
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"image": x.cpu().numpy()})
    raise MFFMTError("--format", f"must be one of {EXPORT_FORMATS}, got {export_format!r}")


def export_difference(model: MFFMT, path: str | os.PathLike, export_format: str, x: torch.Tensor) -> float:
    """Largest absolute difference between the exported model's outputs and PyTorch's on ``x``."""
    wrapper = MFFMTExportWrapper(model.eval()).eval()
    device = next(model.parameters()).device
    with torch.no_grad():
        expected = [tensor.cpu().numpy() for tensor in wrapper(x.to(device))]
    exported = run_exported(path, export_format, x)
    if len(exported) != len(expected):
        raise ValueError(f"{path}: exported model returns {len(exported)} outputs, expected {len(expected)}")
    return max(float(np.max(np.abs(a - b))) for a, b in zip(exported, expected))
