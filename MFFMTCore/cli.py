"""The ``mffmt`` command line: ``mffmt train|evaluate|predict|export|fit-input-check|serve|live``.

Each command lives in its own module under ``MFFMTCore.commands`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Problems the user can fix
(:class:`MFFMTCore.errors.MFFMTError`: unreadable image, bad model file, empty dataset, output
folder in use; and the operating system's refusals: read-only folder, disk full, no permission)
are printed as one line naming the path and exit with status 2; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from MFFMTCore.errors import MFFMTError
from MFFMTCore.version import __version__

COMMANDS = ("train", "evaluate", "predict", "export", "fit_input_check", "serve", "live")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mffmt",
        description="Breast-ultrasound lesion segmentation and benign/malignant classification with MFFMT.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"MFFMTCore.commands.{name}").add_parser(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OSError as error:
        path = error.filename if error.filename is not None else ""
        reason = error.strerror or str(error)
        print(f"mffmt {args.command}: error: {path}: {reason}" if path else f"mffmt {args.command}: error: {reason}",
              file=sys.stderr)
        return 2
    except MFFMTError as error:
        print(f"mffmt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
