"""Cost of MFFMT against its bare ResNet backbone: parameters, multiply-adds, per-frame CPU latency.

Multiply-adds are counted with ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2). It counts
the matrix products (convolutions, linear layers, the attention matmuls); elementwise work
(activations, BN in eval, pooling, interpolation, softmax) is not counted, as in the usual MAC
figures. Latency: batch 1, ``torch.inference_mode``, warm-up, median of N runs, in one process, the models
interleaved run by run, with one thread and with torch's default number of threads.

The "bare" ResNet is the classifier the paper compares with: the same MONAI ResNet (grey input,
stride-2 stem), global average pooling and one fully connected layer to 2 logits.

The shipped model is timed too, at its own input size, against the bare ResNet18 and the
paper-faithful MFFMT18 (MFF 512 wide, MLP ratio 3) at that size: the speed goal is <= 1.3x bare.

Run: ``python bench/bench_network.py [--size 256] [--runs 30] [--shipped-only]``.
"""

from __future__ import annotations

from needs import require

require("MFFMTCore")

import argparse
import statistics
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from MFFMTCore.model_file import read_model_info, resolve_model_path
from MFFMTCore.network import MFFMT, backbone_channels, backbone_features, make_backbone


class BareResNet(nn.Module):
    """ResNet classifier: backbone, global average pooling, one fully connected layer."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.backbone = make_backbone(name, in_channels=1)
        self.fc = nn.Linear(backbone_channels(name)[-1], 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(backbone_features(self.backbone, x)[-1].mean(dim=(2, 3)))


def parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def multiply_adds(model: MFFMT | BareResNet, x: torch.Tensor) -> tuple[int, dict[str, int]]:
    """Total multiply-adds of one forward pass, and per top-level child module."""
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(x)
    total = counter.get_total_flops() // 2
    per_module = counter.get_flop_counts()
    root = type(model).__name__
    children = {
        name: sum(per_module.get(f"{root}.{name}", {}).values()) // 2
        for name, child in model.named_children() if name != "backbone" and child is not None
    }
    # The backbone is what the other parts leave.
    children["backbone"] = total - sum(children.values())
    return total, children


def latency_ms(models: dict[str, nn.Module], x: torch.Tensor, runs: int, warmup: int = 5) -> dict[str, float]:
    """Median wall time of one forward pass per model, in milliseconds.

    The models run in turn (A, B, C, A, B, C, ...), so that load from other processes on a shared
    machine falls on all of them alike and their ratio stays meaningful.
    """
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        for index in range(warmup + runs):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                if index >= warmup:
                    times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(values) for name, values in times.items()}


def shipped_latency(runs: int) -> None:
    """The shipped model against bare ResNet18 and the paper-faithful MFFMT18, one thread, its input size."""
    info = read_model_info(resolve_model_path(None))
    height, width = info.input_size
    x = torch.rand(1, 1, height, width)
    paper = {**info.architecture, "embed_dim": 512, "mlp_ratio": 3.0}
    timed = {"ResNet18 (bare)": BareResNet("resnet18").eval(), f"shipped {info.name}": MFFMT(**info.architecture).eval(),
             "paper-faithful MFFMT18": MFFMT(**paper).eval()}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    ms = latency_ms(timed, x, runs)
    torch.set_num_threads(threads)
    base = ms["ResNet18 (bare)"]
    print(f"## Shipped model ({info.architecture.get('embed_dim')}-wide MFF, MLP ratio {info.architecture.get('mlp_ratio')}) "
          f"at {height}x{width}, 1 thread, median of {runs}, interleaved\n")
    print("| model | ms per frame | over bare |")
    print("|---|---|---|")
    for name, value in ms.items():
        print(f"| {name} | {value:.1f} | {value / base:.3f}x |")
    print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256, help="square input size (multiple of 32)")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per model and thread setting")
    parser.add_argument("--decoder-channels", type=int, default=None, help="override the decoder width")
    parser.add_argument("--shipped-only", action="store_true", help="only the shipped model's latency ratio")
    args = parser.parse_args()
    shipped_latency(args.runs)
    if args.shipped_only:
        return
    torch.manual_seed(0)
    x = torch.rand(1, 1, args.size, args.size)
    extra = {} if args.decoder_channels is None else {"decoder_channels": args.decoder_channels}

    print(f"## Cost at {args.size}x{args.size}, batch 1 (MACs: FlopCounterMode FLOPs / 2)\n")
    print("| model | parameters (M) | MACs (G) | params over bare | MACs over bare |")
    print("|---|---|---|---|---|")
    breakdown = {}
    models = {}
    for name, label in (("resnet18", "18"), ("resnet50", "50")):
        bare = BareResNet(name).eval()
        variants = {
            f"MFFMT{label}": MFFMT(name, **extra).eval(),
            f"MFFMT{label} without decoder": MFFMT(name, decoder=False).eval(),
        }
        bare_params, (bare_macs, _) = parameters(bare), multiply_adds(bare, x)
        print(f"| ResNet{label} (bare) | {bare_params / 1e6:.2f} | {bare_macs / 1e9:.3f} | | |")
        for variant, model in variants.items():
            params, (macs, children) = parameters(model), multiply_adds(model, x)
            print(f"| {variant} | {params / 1e6:.2f} | {macs / 1e9:.3f} | "
                  f"{100 * (params / bare_params - 1):+.1f}% | {100 * (macs / bare_macs - 1):+.1f}% |")
            breakdown[variant] = {child: (parameters(getattr(model, child)), count) for child, count in children.items()
                                  if getattr(model, child) is not None}
        models[label] = (bare, variants[f"MFFMT{label}"])

    print("\n## Breakdown by part (parameters M / MACs G)\n")
    parts = ["backbone", "clep", "fusion", "lesion_decoder", "classifier"]
    print("| model | " + " | ".join(parts) + " |")
    print("|---|" + "---|" * len(parts))
    for variant, values in breakdown.items():
        cells = [f"{values[p][0] / 1e6:.2f} / {values[p][1] / 1e9:.3f}" if p in values else "-" for p in parts]
        print(f"| {variant} | " + " | ".join(cells) + " |")

    default_threads = torch.get_num_threads()
    bare, mffmt = models["18"]
    timed = {"ResNet18 (bare)": bare, "MFFMT18": mffmt, "MFFMT18 without decoder": MFFMT(decoder=False).eval()}
    print(f"\n## CPU latency per frame, ms (median of {args.runs}, batch 1, inference_mode, models interleaved)\n")
    print("| threads | " + " | ".join(timed) + " | MFFMT18 over bare | without decoder over bare |")
    print("|---|" + "---|" * (len(timed) + 2))
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        ms = latency_ms(timed, x, args.runs)
        base = ms["ResNet18 (bare)"]
        print(f"| {threads} | " + " | ".join(f"{value:.1f}" for value in ms.values())
              + f" | {100 * (ms['MFFMT18'] / base - 1):+.1f}% | {100 * (ms['MFFMT18 without decoder'] / base - 1):+.1f}% |")
    torch.set_num_threads(default_threads)

if __name__ == "__main__":
    main()
