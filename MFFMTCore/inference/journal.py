"""Write, then record: the output files of an input are listed in a journal before they are written,
and taken off it once results.json records them (or they are removed again).

Without it, a kill (SIGKILL, out of memory) or a failure after an input's files are written but
before results.json lists them would leave files that no run recorded: every later rerun would
take them for the user's own and refuse that input for good. With it, the next run (holding the
folder's lock) knows which files were its own and replaces them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from MFFMTCore.files import write_json_atomic

#: The journal's name in the output folder (hidden; never an input, never a result).
JOURNAL_NAME = ".mffmt-writing.json"


class OutputJournal:
    """The files an ``mffmt predict`` run in ``folder`` is writing and has not recorded yet.

    Use only while holding the folder's :class:`~MFFMTCore.folder_lock.FolderLock`.

    Args:
        folder: the output folder.
    """

    def __init__(self, folder: str | os.PathLike):
        self.path = Path(folder) / JOURNAL_NAME
        self._pending: list[str] = []  # written (or being written) since the results were last recorded

    def _listed(self) -> list[Path]:
        try:
            listed = json.loads(self.path.read_text(encoding="utf-8")).get("writing", [])
        except (OSError, ValueError, AttributeError):
            return []  # no journal (the last run ended cleanly), or one cut short: nothing to recover
        return [Path(name) for name in listed if isinstance(name, str)]

    def recover(self, entries: dict[str, dict[str, Any]]) -> list[Path]:
        """Clean up after a run that was stopped between writing files and recording them.

        Files on the journal that results.json does not record are that run's leftovers: removed.
        An input whose recorded files were being rewritten loses its content hash, so that it is
        redone rather than skipped (its files may mix two runs).

        Args:
            entries: results.json's entries by input; edited in place.

        Returns:
            The leftover files removed.
        """
        recorded: dict[str, str] = {}
        for key, entry in entries.items():
            for file in (entry.get("outputs") or {}).values():
                recorded[os.path.realpath(file)] = key
        removed = []
        for file in self._listed():
            key = recorded.get(os.path.realpath(file))
            if key is not None:
                entries[key].pop("sha256", None)
            elif file.is_file() or file.is_symlink():
                file.unlink(missing_ok=True)
                removed.append(file)
        self.end()
        return removed

    def begin(self, files: Iterable[str | os.PathLike]) -> None:
        """List ``files`` (absent, or this folder's own) as being written, beside those of earlier inputs
        not recorded yet; call before writing them."""
        self._pending.extend(str(Path(file).absolute()) for file in files)
        write_json_atomic(self.path, {"writing": self._pending})

    def end(self) -> None:
        """Every file listed is recorded (or removed): the journal is cleared."""
        self._pending = []
        self.path.unlink(missing_ok=True)

    def abandon(self, files: Iterable[str | os.PathLike]) -> None:
        """An input failed: remove ``files`` (written by this attempt, or recorded by an earlier run for an
        input that is now a failure) and take them off the journal."""
        gone = {str(Path(file).absolute()) for file in files}
        for name in gone:
            file = Path(name)
            if file.is_file() or file.is_symlink():
                file.unlink(missing_ok=True)
        self._pending = [name for name in self._pending if name not in gone]
        if self._pending:
            write_json_atomic(self.path, {"writing": self._pending})
        else:
            self.path.unlink(missing_ok=True)
