"""``mffmt serve``: a worker that loads a model once and answers requests on stdin/stdout.

Requests are JSON lines, frames travel as binary attachments (see :mod:`MFFMTCore.serving.protocol`
for the format and why, :mod:`MFFMTCore.serving.worker` for the ops). Start it through
:class:`MFFMTCore.serving.client.WorkerClient` rather than by hand. Exits with status 0 when its
input closes, 2 when the model cannot be loaded, 130 on Ctrl-C; files it was writing are written
atomically, so none is left half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

import torch

from MFFMTCore.commands.options import add_device, add_threads, positive_int
from MFFMTCore.serving.worker import Worker


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="long-lived worker: load a model once, answer segment/predict requests on stdin/stdout",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("--model", metavar="MODEL", help="model file (default: the model shipped with MFFMTCore)")
    add_device(parser)
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="frames per network call")
    add_threads(parser, "CPU threads for torch (default: torch's choice)")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> NoReturn:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Replies own the real stdout; anything else printed (by us or a library, from Python or C)
    # goes to stderr instead of corrupting the reply stream.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    sys.stdout = sys.stderr
    with replies:
        try:
            status = Worker(sys.stdin.buffer, replies, args.model, args.device, args.batch_size).run()
        except KeyboardInterrupt:  # Ctrl-C in the client's terminal reaches its worker too
            status = 130
    # The client is gone and every file was written atomically: nothing is left to clean up, and the
    # interpreter's teardown (torch's) takes seconds on a busy machine, so the worker ends at once.
    sys.stderr.flush()
    os._exit(status)
