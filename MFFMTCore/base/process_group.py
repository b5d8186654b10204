"""Child processes started in a process group of their own and stopped as a group.

A process we start may start others: 3D Slicer's ``PythonSlicer`` is a launcher that runs the real
Python as its child, and ``mffmt train`` may start data-loading workers. Signalling the launcher
alone would leave the Python under it running (with the model loaded, holding the output pipe).
So the ``mffmt serve`` client (:mod:`MFFMTCore.serving.client`) and the Slicer module's background
commands (``MFFMTSlicerLib.process``) start each child in a new session (POSIX; a new process group
on Windows) with :func:`group_options`, and stop it with :func:`stop_group`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any


def group_options() -> dict[str, Any]:
    """Keyword arguments of :class:`subprocess.Popen` that start the child in a group of its own
    (and, on Windows, without a console window)."""
    if sys.platform == "win32":
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP | subprocess.CREATE_NO_WINDOW}
    return {"start_new_session": True}


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to every process of ``process``'s group (POSIX); nothing when the group is gone."""
    try:
        os.killpg(process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass  # already gone (a PermissionError on macOS for a group of zombies)


def stop_group(process: subprocess.Popen, grace_s: float = 5.0, wait_s: float = 0.0) -> int:
    """Stop ``process`` and every process it started; its exit status.

    Args:
        process: a child started with :func:`group_options`.
        grace_s: how long it may take to stop after SIGTERM.
        wait_s: how long it may take to end by itself (e.g. after its input was closed) before SIGTERM.

    On POSIX the group gets SIGTERM (``mffmt train`` stops at a safe point on it); when the process
    has ended or ``grace_s`` has passed, whatever is left of the group gets SIGKILL: children that
    outlive the launcher would keep the output pipe open and the model in memory. On Windows
    ``taskkill /T /F`` ends the tree at once.
    """
    if sys.platform == "win32":
        try:
            process.wait(wait_s)
        except subprocess.TimeoutExpired:
            subprocess.run(["taskkill", "/T", "/F", "/PID", str(process.pid)], capture_output=True, check=False)
        return process.wait()
    if not _ended(process, wait_s):
        signal_group(process, signal.SIGTERM)
        _ended(process, grace_s)
    signal_group(process, signal.SIGKILL)
    return process.wait()


def _ended(process: subprocess.Popen, timeout_s: float) -> bool:
    """Whether ``process`` ends within ``timeout_s``, leaving it unreaped where the system allows: while
    it is a zombie its group id cannot be given to another process, so the SIGKILL that follows
    reaches its own group only."""
    if not hasattr(os, "waitid"):
        try:
            process.wait(timeout_s)
            return True
        except subprocess.TimeoutExpired:
            return False
    deadline = time.monotonic() + timeout_s
    while process.returncode is None:
        try:
            if os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
                return True
        except ChildProcessError:
            return True  # reaped already
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
