"""The one rule for choosing where the network runs: ``--device auto|cpu|cuda|mps`` (and ``--threads``).

``auto`` (the default everywhere) takes what is present, in the order of :data:`PREFERENCE`: an
NVIDIA GPU (CUDA), else an Apple GPU (MPS), else the CPU. A device chosen by name that this
computer lacks is refused in one line (:func:`choose_device`), before any model is loaded.

What is present is asked of torch in the process that runs the network
(:func:`MFFMTCore.devices.present_devices`); the Slicer module, which never imports torch, offers
every choice (:data:`DEVICE_LABELS`) and shows the worker's one-line refusal.

On the CPU, torch may use at most :data:`THREADS_PER_CORE` threads per usable core (``--threads``).
"""

from __future__ import annotations

import os
from collections.abc import Collection

from MFFMTCore.errors import MFFMTError

#: The devices by name.
DEVICES = ("cpu", "cuda", "mps")
#: The value that lets :func:`choose_device` pick.
AUTO = "auto"
#: Every ``--device`` value.
DEVICE_CHOICES = (AUTO, *DEVICES)
#: What ``auto`` takes, best first.
PREFERENCE = ("cuda", "mps", "cpu")
#: What each device is, for people.
DESCRIPTIONS = {"cpu": "CPU", "cuda": "NVIDIA GPU (CUDA)", "mps": "Apple GPU (MPS)"}
#: The Slicer module's device list: what the panel shows -> the ``--device`` value.
DEVICE_LABELS = {"Automatic": AUTO, "CPU": "cpu", "GPU": "cuda", "Apple GPU": "mps"}
#: ``--device`` help, for every command that has the option.
DEVICE_HELP = ("auto: an NVIDIA GPU (cuda) if present, else an Apple GPU (mps), else the cpu; "
               "or name one of cpu, cuda, mps")


def choose_device(requested: str, present: Collection[str]) -> str:
    """The device to run on.

    Args:
        requested: a :data:`DEVICE_CHOICES` value.
        present: the devices this computer has (``cpu`` always).

    Raises:
        MFFMTError: ``requested`` is not a choice, or names a device that is not present.
    """
    if requested not in DEVICE_CHOICES:
        raise MFFMTError("--device", f"unknown device {requested!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if requested == AUTO:
        return next(device for device in PREFERENCE if device in present or device == "cpu")
    if requested not in present and requested != "cpu":
        others = ", ".join(device for device in PREFERENCE if device in present or device == "cpu")
        raise MFFMTError(f"--device {requested}", f"this computer has no {DESCRIPTIONS[requested]} that torch can "
                                                  f"use; choose auto or one of: {others}")
    return requested


#: ``--threads`` above this many times the usable cores only slows torch down (and 100000 never ends).
THREADS_PER_CORE = 4


def available_cores() -> int:
    """CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def threads_problem(threads: int) -> str | None:
    """What is wrong with ``threads`` torch CPU threads (beyond being a positive whole number), or None."""
    limit = THREADS_PER_CORE * available_cores()
    if threads > limit:
        return f"must be at most {limit} ({THREADS_PER_CORE} x the {available_cores()} cores this process may use), got {threads}"
    return None
