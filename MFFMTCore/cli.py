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
import os
import sys

from MFFMTCore.base.progress_events import event_line, make_event
from MFFMTCore.commands.options import VOCABULARY
from MFFMTCore.errors import MFFMTError
from MFFMTCore.version import __version__

COMMANDS = ("train", "evaluate", "predict", "export", "fit_input_check", "serve", "live")

# Torch's OpenMP threads spin at every barrier by default: when another process takes a core, the
# others spin on a descheduled thread, and a forward pass on 2 threads ran 2.5x slower than on one
# (bare ResNet18 on this project's 2-core machine at load average 4.7: 5.3 frames/s, 13.3 with passive
# waiting). Set before any command imports torch (OpenMP reads it once); a user's own setting is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The ``mffmt`` parser with every command, or only ``command`` (its name as typed, e.g.
    ``fit-input-check``) when given.

    :func:`main` registers only the command it runs: each command module imports what it runs, and
    importing them all (training's MONAI data pipeline among them) added about 2 s to every start.
    """
    parser = argparse.ArgumentParser(
        prog="mffmt",
        description="Breast-ultrasound lesion segmentation and benign/malignant classification with MFFMT.",
        epilog=VOCABULARY, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in [command.replace("-", "_")] if command else COMMANDS:
        importlib.import_module(f"MFFMTCore.commands.{name}").add_parser(subparsers)
    return parser


def _refuse(args: argparse.Namespace, message: str) -> int:
    """Report a user's problem in one line (and as an error event under ``--progress json``); status 2."""
    print(f"mffmt {args.command}: error: {message}", file=sys.stderr)
    if getattr(args, "progress", None) == "json":
        print(event_line(make_event("error", message=message)), flush=True)
    return 2


def _named_command(argv: list[str]) -> str | None:
    """The command ``argv`` starts with, as typed; None for anything else (``--help``, a typo)."""
    if argv and argv[0] in {name.replace("_", "-") for name in COMMANDS}:
        return argv[0]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser(_named_command(argv)).parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except OSError as error:
        path = error.filename if error.filename is not None else ""
        reason = error.strerror or str(error)
        return _refuse(args, f"{path}: {reason}" if path else reason)
    except MFFMTError as error:
        return _refuse(args, str(error))


if __name__ == "__main__":
    sys.exit(main())
