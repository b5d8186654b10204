"""What torch can run on here, and the torch device of a ``--device`` value (the rule is
:mod:`MFFMTCore.base.devices`)."""

from __future__ import annotations

import torch

from MFFMTCore.base.devices import choose_device


def present_devices() -> tuple[str, ...]:
    """The devices torch can use in this process, from :data:`~MFFMTCore.base.devices.DEVICES`."""
    mps = getattr(torch.backends, "mps", None)  # absent from torch builds without Apple support
    return ("cpu",
            *(("cuda",) if torch.cuda.is_available() else ()),
            *(("mps",) if mps is not None and mps.is_available() else ()))


def torch_device(requested: str | torch.device) -> torch.device:
    """The device to run on for ``requested`` (``auto``, ``cpu``, ``cuda``, ``mps``; a torch device is kept).

    Raises:
        MFFMTError: an unknown value, or a device this computer lacks (one line).
    """
    if isinstance(requested, torch.device):
        return requested
    return torch.device(choose_device(requested, present_devices()))
