"""A command of the module running in the background: start, follow, wait for, cancel. Slicer-free.

The network never runs in Slicer's process: each task runs ``<PythonSlicer> -m MFFMTCore ...`` in a
temporary working folder of its own (removed at the end, so nothing is written inside the
extension's folder) and is followed by :meth:`BackgroundTask.poll`: the panel calls it from a
timer, a script waits with :meth:`BackgroundTask.wait`.
"""

import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from MFFMTSlicerLib.commands import child_environment, locate_core_package
from MFFMTSlicerLib.process import BackgroundProcess


def coreFolder() -> Path | None:
    """The folder that holds the MFFMTCore package: next to the module when installed, else one up."""
    moduleDir = Path(__file__).resolve().parent.parent
    return locate_core_package([moduleDir, moduleDir.parent])


def pythonExecutable() -> str:
    """Slicer's Python launcher, which starts Python with Slicer's environment."""
    return shutil.which("PythonSlicer") or sys.executable


def makeWorkFolder(root: str | os.PathLike) -> Path:
    """A new empty working folder inside ``root`` (created if needed)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="MFFMT-", dir=root))


def startCommand(args: list[str], workDir: Path) -> BackgroundProcess:
    """Start ``args`` with MFFMTCore importable, in ``workDir``."""
    logging.info("Starting: " + " ".join(args))
    process = BackgroundProcess(args, env=child_environment(os.environ, coreFolder()), cwd=str(workDir))
    process.start()
    return process


def processError(name: str, process: BackgroundProcess) -> str:
    """A message for a failed command: its own one-line refusal of a user error (exit status 2, e.g. an
    absent --device), else its exit status and last output lines."""
    lines = [line for line in process.tail(12) if line.strip()]
    refusal = f"{name}: error: "
    if process.returncode == 2 and lines and lines[-1].startswith(refusal):
        return lines[-1][len(refusal):]
    return f"{name} failed (exit status {process.returncode}):\n" + "\n".join(lines)


class BackgroundTask:
    """One command in the background; ``status`` is "running", "done", "failed" or "cancelled".

    Subclasses read the command's output in :meth:`_poll` and take over its results in :meth:`_finish`;
    work that is not a process of its own (a request to the warm worker) overrides :meth:`_ended`
    and :meth:`_stop` too.

    Args:
        process: the started command (None for work that overrides :meth:`_ended` and :meth:`_stop`).
        workDir: its temporary working folder, removed when the task ends (unless ``keepFiles``).
        progressCallback: called with the task whenever progress is read.
        completedCallback: called with the task once, when it has finished, failed or been cancelled.
        keepFiles: keep the working folder for inspection.
    """

    name = "command"

    def __init__(self, process: BackgroundProcess | None, workDir: Path,
                 progressCallback: Callable[["BackgroundTask"], None] | None = None,
                 completedCallback: Callable[["BackgroundTask"], None] | None = None, keepFiles: bool = False):
        self.process = process
        self.workDir = workDir
        self.progressCallback = progressCallback
        self.completedCallback = completedCallback
        self.keepFiles = keepFiles
        self.status = "running"
        self.error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status != "running"

    def poll(self) -> None:
        """Read what the command reported; when it has ended, take over its results."""
        if self.finished:
            return
        self._poll()
        if self.progressCallback:
            self.progressCallback(self)
        if self._ended():
            self._poll()  # what it wrote just before it ended
            try:
                self._finish()
            except Exception as error:  # reported through the task: the panel shows it, scripts re-raise it
                self.status, self.error = "failed", str(error)
                logging.error(f"{self.name} failed: {error}")
            self._complete()

    def wait(self, intervalS: float = 0.2) -> "BackgroundTask":
        """Block until the task has ended; returns the task."""
        while not self.finished:
            self.poll()
            if not self.finished:
                self._idle(intervalS)
        return self

    def cancel(self) -> None:
        """Stop the command now; the task ends "cancelled" and leaves nothing behind."""
        if self.finished:
            return
        self._stop()
        self.status = "cancelled"
        self._complete()

    def _ended(self) -> bool:
        """Whether the work has ended, so that its results can be taken over."""
        return self.process.is_finished()

    def _stop(self) -> None:
        """Stop the work now; nothing it does afterwards may write into the working folder."""
        self.process.terminate(grace_s=2.0)

    def _idle(self, intervalS: float) -> None:
        """Wait between two polls of :meth:`wait` (at most ``intervalS``; less when the work can say it changed)."""
        time.sleep(intervalS)

    def _poll(self) -> None:
        for line in self.process.read_lines():
            logging.info(f"{self.name}: {line}")

    def _finish(self) -> None:
        raise NotImplementedError

    def _complete(self) -> None:
        if not self.keepFiles:
            shutil.rmtree(self.workDir, ignore_errors=True)
        if self.completedCallback:
            self.completedCallback(self)
