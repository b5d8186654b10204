"""The one base class of the problems a user can fix: bad input, bad option, unusable file or folder.

Every such error names the path (or option) and the problem in one line. The ``mffmt`` command line
prints it as ``mffmt COMMAND: error: PATH: PROBLEM`` and exits with status 2; the Slicer module shows
it as it is. Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations

import os


class MFFMTError(ValueError):
    """A problem the user can fix. The message is ``"<path>: <problem>"`` on one line.

    Args:
        path: the file, folder or option concerned.
        problem: what is wrong and, where it helps, what to do.
    """

    def __init__(self, path: str | os.PathLike, problem: str):
        self.path = str(path)
        self.problem = " ".join(str(problem).split())  # one line: it is a log line and a CSV cell
        super().__init__(f"{self.path}: {self.problem}")
