"""The one base class of the problems a user can fix: bad input, bad option, unusable file or folder.

Every such error names the path (or option) and the problem in one line. The ``mffmt`` command line
prints it as ``mffmt COMMAND: error: PATH: PROBLEM`` and exits with status 2; the Slicer module shows
it as it is. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


def one_line(text: str) -> str:
    """``text`` with every run of whitespace (newlines included) made one space: a message that is a
    log line, a CSV cell or a status line."""
    return " ".join(str(text).split())


class MFFMTError(ValueError):
    """A problem the user can fix. The message is ``"<path>: <problem>"`` on one line.

    Args:
        path: the file, folder or option concerned.
        problem: what is wrong and, where it helps, what to do.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = one_line(problem)
        super().__init__(f"{self.path}: {self.problem}")
