"""One run at a time per output folder: a lock file naming the process that holds the folder.

``mffmt predict`` and ``mffmt train`` write several files into one folder and rewrite its results
tables; two runs into the same folder would lose each other's rows or overwrite each other's
outputs. So each takes ``FOLDER/.mffmt.lock`` first: the file is created exclusively (``O_EXCL``)
and holds the owner's process id, host, command and start time as JSON. A second run is refused
with a message naming the running process.

Stale-lock rule: a lock whose process no longer runs on this host (killed, machine restarted) is
stale and is taken over. A lock written on another host cannot be checked from here; it is
respected, and the message says to remove the file when that process is gone. A lock file that is
empty or not JSON is stale once it is older than :data:`UNREADABLE_GRACE_S` (a writer that has just
created it may not have written its contents yet).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

from MFFMTCore.errors import MFFMTError

LOCK_NAME = ".mffmt.lock"
#: Seconds after which a lock file without readable contents counts as stale.
UNREADABLE_GRACE_S = 10.0


class FolderLockedError(MFFMTError):
    """Another run is writing into the folder. The message names it."""


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


class FolderLock:
    """Hold ``directory`` for this process while the ``with`` block runs (the folder is created).

    Args:
        directory: the output folder.
        command: what holds it, for the message another run shows (e.g. ``"mffmt predict"``).

    Raises:
        FolderLockedError: on entry, when another live process holds the folder.
        OSError: the folder cannot be created or written (read-only, not a folder).
    """

    def __init__(self, directory: str | os.PathLike, command: str) -> None:
        self.directory = Path(directory)
        self.path = self.directory / LOCK_NAME
        self.command = command
        self._held = False

    def _owner(self) -> dict | None:
        """The lock file's contents, or None when it is stale (or vanished)."""
        try:
            text = self.path.read_text(encoding="utf-8")
            age = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return None
        try:
            owner = json.loads(text)
            pid = int(owner["pid"])
        except (ValueError, KeyError, TypeError):
            return {"pid": "?", "host": "?", "command": "?", "started": "?"} if age < UNREADABLE_GRACE_S else None
        if owner.get("host") == socket.gethostname() and not _process_alive(pid):
            return None
        return owner

    def acquire(self) -> FolderLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        record = json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "argv": sys.argv, "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }, allow_nan=False)
        for _ in range(3):  # a stale lock is removed and the exclusive create tried again
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None:
                    raise FolderLockedError(
                        self.directory,
                        f"in use by {owner.get('command', '?')} (process {owner.get('pid')} on "
                        f"{owner.get('host')}, since {owner.get('started')}); wait for it to finish or "
                        f"choose another folder (if that process is gone, remove {self.path})") from None
                self.path.unlink(missing_ok=True)
                continue
            try:
                with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                    handle.write(record)
            except OSError:  # e.g. a full disk: leave no empty lock behind
                self.path.unlink(missing_ok=True)
                raise
            self._held = True
            return self
        raise FolderLockedError(self.directory, f"cannot take {self.path}: other runs keep taking it")

    def release(self) -> None:
        """Remove the lock file if this process still holds it."""
        if not self._held:
            return
        self._held = False
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.release()
