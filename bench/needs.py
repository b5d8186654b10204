"""What a benchmark needs, checked before it imports anything heavy.

Each benchmark calls :func:`require` with MFFMTCore (whose installation brings torch, MONAI and the
rest) and the packages of the dev extras it uses (ONNX, ONNX Runtime, pyigtl); a missing one stops it
with one line saying what to install, instead of a traceback half-way through.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

INSTALL = "pip install -e '.[dev]'"


def require(*modules: str) -> None:
    """Exit with status 2 and one line on stderr naming the missing ``modules`` and how to install them.

    Args:
        modules: importable names (``"MFFMTCore"``, ``"pyigtl"``, ...).
    """
    missing = [module for module in modules if not _installed(module)]
    if missing:
        print(f"{Path(sys.argv[0]).name}: install {', '.join(missing)}: {INSTALL}", file=sys.stderr)
        sys.exit(2)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package that is missing, or an import hook that refuses it
        return False
