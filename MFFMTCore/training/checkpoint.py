"""Training checkpoints: written atomically, read back with ``torch.load(weights_only=True)``.

A checkpoint holds only tensors, numbers, strings, lists and dicts, never pickled objects, so
loading one cannot run code. Random-number states are stored in that form too: numpy's Mersenne
Twister keys as an int64 tensor, Python's as a list of ints.
"""

from __future__ import annotations

import os
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import atomic_path, describe_write_error

CHECKPOINT_VERSION = 1


def capture_rng_state() -> dict[str, Any]:
    """The states of torch's, numpy's and Python's global random generators, in plain form."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(position),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
        "python": {"version": int(version), "state": [int(value) for value in python_state],
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set the global random generators to a state from :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically; an interrupted write leaves the previous file intact.

    Raises:
        MFFMTError: the file cannot be written (e.g. the disk is full); the previous file is kept.
    """
    path = Path(path)
    with atomic_path(path) as temporary:
        try:
            torch.save({"version": CHECKPOINT_VERSION, **state}, temporary)
        except RuntimeError as error:  # torch reports a full disk as "[enforce fail at inline_container.cc...]"
            raise MFFMTError(path, f"cannot be written ({describe_write_error(temporary, error)}); "
                                   "the previous checkpoint is kept") from error
    return path


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``).

    Raises:
        MFFMTError: the file is missing, damaged, holds objects other than plain data, or was written
            by a newer version; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise MFFMTError(path, "checkpoint not found (nothing to resume)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MFFMTError(path, f"not a readable training checkpoint ({first_line})") from error
    if not isinstance(state, dict) or "epoch" not in state:
        raise MFFMTError(path, "not a training checkpoint")
    if int(state.get("version", 0)) > CHECKPOINT_VERSION:
        raise MFFMTError(path, "written by a newer MFFMTCore; upgrade to resume it")
    return state
