"""``mffmt live``: segment every frame an OpenIGTLink server sends, and send the results back to it.

Connects to HOST:PORT (a PLUS server, 3D Slicer's OpenIGTLinkIF in server mode, a scanner) and
reconnects when the server restarts. Each IMAGE frame comes back as an IMAGE label map on device
``MFFMTLabel`` (same geometry) and a STRING of JSON on ``MFFMTResult`` (class, probabilities,
lesion present, area), both with the frame's timestamp; see :mod:`MFFMTCore.serving.live`. When
frames come faster than they are segmented, the newest wins and the others are dropped and
counted. Runs until Ctrl-C or SIGTERM (exit status 0); prints its counts to stderr as it goes.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

import torch

from MFFMTCore.base.progress_events import event_line, make_event
from MFFMTCore.commands.options import (
    add_device,
    add_lesion_threshold,
    add_progress,
    add_threads,
    positive_int,
)
from MFFMTCore.devices import torch_device
from MFFMTCore.errors import MFFMTError
from MFFMTCore.inference.imaging_region import STREAM_IMAGING_REGION_CHOICES
from MFFMTCore.inference.predictor import Predictor


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` -> (host, port).

    Raises:
        ValueError: not HOST:PORT with a port in 1-65535.
    """
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT (e.g. localhost:18944), got {text!r}")
    return host.strip("[]"), int(port)


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from error


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "live",
        help="segment live frames from an OpenIGTLink server (PLUS, 3D Slicer) and send the results back",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--igtl", type=_address, required=True, metavar="HOST:PORT", help="the OpenIGTLink server")
    parser.add_argument("--model", metavar="MODEL", help="model file (default: the model shipped with MFFMTCore)")
    add_lesion_threshold(parser)
    parser.add_argument("--imaging-region", choices=STREAM_IMAGING_REGION_CHOICES, default="auto",
                        help="where the scan is in each frame: auto = detected (a screen grab's borders, text and "
                             "panels left out); none = the whole frame, for a source that sends the B-mode scan "
                             "itself (no search, a little faster)")
    parser.add_argument("--input-device", metavar="NAME", help="segment only IMAGE messages of this device (default: any)")
    # Device names default to LiveSegmenter's (MFFMTLabel, MFFMTResult, MFFMTModel).
    parser.add_argument("--label-device", metavar="NAME", help="device name of the label maps sent (default: MFFMTLabel)")
    parser.add_argument("--result-device", metavar="NAME",
                        help="device name of the result strings sent (default: MFFMTResult)")
    parser.add_argument("--model-device", metavar="NAME",
                        help="device name of STRING messages asking for another model (default: MFFMTModel; "
                             "see --allow-model-swap)")
    parser.add_argument("--allow-model-swap", action="store_true",
                        help="let the server switch models by sending a model path on --model-device")
    parser.add_argument("--queue", type=positive_int, default=1, metavar="N",
                        help="frames kept waiting while one is segmented; older ones are dropped (default 1)")
    parser.add_argument("--workers", type=positive_int, metavar="N",
                        help="frames segmented at once (default: one per usable core on cpu, 1 on cuda); results "
                             "still go out in frame order")
    add_threads(parser, "torch threads per frame (default on cpu: 1; one frame per core is much faster than "
                        "one frame on all cores while frames keep arriving, see bench/bench_live.py)")
    add_device(parser)
    parser.add_argument("--report-every", type=float, default=10.0, metavar="S", help="seconds between status lines")
    add_progress(parser, help="bar: a status line on stderr every --report-every seconds (default); json: the "
                              "same counts as one JSON event per line on stdout; none: nothing")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    try:
        from MFFMTCore.serving.live import LiveSegmenter
    except ModuleNotFoundError as error:  # pyigtl is the `live` extra
        raise MFFMTError(str(error.name), "not installed; mffmt live needs it: pip install 'MFFMTCore[live]'") from error
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    device = torch_device(args.device)
    workers = args.workers or (cores if device.type == "cpu" else 1)
    threads = args.threads or (1 if device.type == "cpu" else None)
    if threads is not None:
        torch.set_num_threads(threads)
    host, port = args.igtl
    devices = {name: getattr(args, name) for name in ("label_device", "result_device", "model_device")}
    live = LiveSegmenter(
        Predictor(args.model, device=device, batch_size=1), host, port, input_device=args.input_device,
        threshold=args.lesion_threshold, imaging_region=args.imaging_region, queue_size=args.queue,
        allow_model_swap=args.allow_model_swap, workers=workers,
        **{name: value for name, value in devices.items() if value is not None},
    )

    def report(stats: dict[str, Any]) -> None:
        if args.progress == "json":
            print(event_line(make_event("progress", **stats)), flush=True)
        elif args.progress == "bar":
            print("mffmt live: " + ", ".join(f"{key} {value}" for key, value in stats.items()), file=sys.stderr, flush=True)

    def stop(signum: int, frame: Any) -> None:
        live.stop()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    print(f"mffmt live: model {live.predictor.model_path}, {workers} worker(s) of {torch.get_num_threads()} thread(s); "
          f"connecting to {host}:{port} (Ctrl-C stops)", file=sys.stderr, flush=True)
    live.run(args.report_every, report)
    return 0
