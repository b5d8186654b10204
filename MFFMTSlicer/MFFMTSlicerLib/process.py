"""A command run in the background whose output lines are collected without blocking the caller.

Slicer's GUI polls :meth:`BackgroundProcess.read_lines` from a timer; a script can poll it in a
loop. The process runs in its own process group so that Cancel stops it together with any process
it started (Slicer's ``PythonSlicer`` is a launcher that starts the real Python as a child; see
:mod:`MFFMTCore.base.process_group`).
"""

from __future__ import annotations

import collections
import queue
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence

from MFFMTCore.base.process_group import group_options, stop_group


class BackgroundProcess:
    """Run ``args`` with stdout and stderr merged, reading its output lines on a helper thread.

    Args:
        args: executable and arguments.
        env: environment of the process; None inherits this process's environment.
        cwd: working folder of the process.
        keep_lines: how many of the last output lines :meth:`tail` keeps (for error messages).
    """

    def __init__(self, args: Sequence[str], env: Mapping[str, str] | None = None, cwd: str | None = None,
                 keep_lines: int = 200):
        self.args = [str(arg) for arg in args]
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self._lines: queue.Queue[str] = queue.Queue()
        self._tail: collections.deque[str] = collections.deque(maxlen=keep_lines)
        self._process: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        """Start the process.

        Raises:
            OSError: the executable cannot be started (message names it).
        """
        if self._process is not None:
            raise RuntimeError("the process was already started")
        try:
            self._process = subprocess.Popen(
                self.args, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace", bufsize=1,
                **group_options())
        except OSError as error:
            raise OSError(f"cannot start {self.args[0]}: {error}") from error
        self._reader = threading.Thread(target=self._read, name="BackgroundProcess reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        for line in self._process.stdout:
            line = line.rstrip("\r\n")
            self._tail.append(line)
            self._lines.put(line)
        self._process.stdout.close()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    def read_lines(self) -> list[str]:
        """The output lines that arrived since the last call (never blocks)."""
        lines = []
        while True:
            try:
                lines.append(self._lines.get_nowait())
            except queue.Empty:
                return lines

    @property
    def returncode(self) -> int | None:
        """The exit status once the process has ended, else None."""
        return self._process.poll() if self._process is not None else None

    def is_finished(self) -> bool:
        """True when the process has ended and all its output has been read."""
        return self.returncode is not None and self._reader is not None and not self._reader.is_alive()

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait until the process has ended and its output is read; the exit status, or None on timeout."""
        if self._process is None:
            raise RuntimeError("the process was not started")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            self._process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        assert self._reader is not None
        self._reader.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self._process.returncode

    def tail(self, count: int = 20) -> list[str]:
        """The last ``count`` output lines."""
        return list(self._tail)[-count:]

    def terminate(self, grace_s: float = 5.0) -> None:
        """Stop the process and the processes it started: ask politely, then kill after ``grace_s``
        (:func:`MFFMTCore.base.process_group.stop_group`; ``mffmt train`` stops at a safe point on SIGTERM)."""
        if self._process is not None and self._process.poll() is None:
            stop_group(self._process, grace_s)
