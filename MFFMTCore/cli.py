"""The ``mffmt`` command line: ``mffmt train|evaluate|predict|export|serve|live``.

Each command lives in its own module under ``MFFMTCore.commands`` and exposes
``add_parser(subparsers)`` and ``run(args) -> int``. Errors that name a file and a problem
(unreadable image, bad model file, empty dataset) are printed as one line and exit with status 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from MFFMTCore.version import __version__

COMMANDS = ("train", "evaluate", "predict", "export", "serve", "live")


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
    except (ValueError, FileNotFoundError) as error:
        # ImageReadError, ModelFileError and DatasetError are ValueErrors whose text names the file.
        print(f"mffmt {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
