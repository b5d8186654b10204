"""The logic's warm ``mffmt serve`` worker: started early, reused, restarted, closed. Slicer-free.

Starting a process that imports torch and loads the model takes seconds; segmenting a frame takes a
tenth of one. So the module keeps one ``mffmt serve`` worker (:class:`MFFMTCore.serving.client.WorkerClient`,
which needs no torch in Slicer's process) for all its segment & classify work and live frames:

- started when the module is entered (the panel asks for it then, so the first Apply finds it
  ready) or on first use, with Slicer's Python and the environment the commands get
  (:func:`MFFMTSlicerLib.tasks.pythonExecutable`, :func:`MFFMTSlicerLib.commands.child_environment`);
- reused while it lives, started again when it has died (crashed, killed) or the device changes;
- told to ``load`` another model when one is asked for; the worker verifies the file's checksum
  as it loads it, and a model that cannot be loaded is an error, remembered as the file's
  :meth:`~WarmWorker.unusable` reason (the model list shows it), while the worker keeps the model it had;
- closed when the logic is cleaned up (the module is reloaded, Slicer quits) or :meth:`close` is
  called; a worker whose client has gone also exits by itself, when its input closes.

Starting is slow, so :meth:`WarmWorker.clientLater` does it on a helper thread and the panel stays
responsive; requests themselves are asynchronous (:meth:`WorkerClient.submit`).
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from MFFMTCore.errors import one_line
from MFFMTCore.serving.client import RequestError, WorkerClient, WorkerError
from MFFMTSlicerLib.commands import child_environment, device_argument
from MFFMTSlicerLib.tasks import coreFolder, pythonExecutable


def modelKey(model: str | os.PathLike | None) -> str | None:
    """How a requested model is compared: its absolute path, or None for the default model."""
    return None if model is None else str(Path(model).resolve())


def fileStamp(path: str) -> tuple[int, int] | None:
    """(modification time, size) of a file, or None when it is gone: a changed file is a new one."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return status.st_mtime_ns, status.st_size


class WarmWorker:
    """One ``mffmt serve`` worker shared by the logic's requests.

    Args:
        startTimeoutS: seconds a start may take (importing torch and loading the model).
    """

    def __init__(self, startTimeoutS: float = 300.0):
        self.startTimeoutS = startTimeoutS
        self._client: WorkerClient | None = None
        self._device: str | None = None
        self._model: str | None = None  # the model asked for (modelKey), as the worker has it loaded
        self._lock = threading.Lock()
        self._starter = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mffmt-worker-start")
        self.starts = 0  # how many worker processes were started (for the panel's log and the tests)
        self._unusable: dict[str, tuple[tuple[int, int] | None, str]] = {}  # modelKey -> (fileStamp, reason)

    @property
    def pid(self) -> int | None:
        """The process id of the running worker, or None."""
        client = self._client
        return client.pid if client is not None and client.alive() else None

    def ready(self, model: str | os.PathLike | None, device: str = "auto") -> WorkerClient | None:
        """The worker, when it runs with ``model`` on ``device`` already (no start, no load needed)."""
        client = self._client
        if (client is not None and client.alive() and self._device == device_argument(device)
                and self._model == modelKey(model)):
            return client
        return None

    def client(self, model: str | os.PathLike | None = None, device: str = "auto") -> WorkerClient:
        """The worker with ``model`` loaded on ``device``: started, restarted or told to load it as needed.

        Blocks while a worker starts (seconds); see :meth:`clientLater`.

        Raises:
            WorkerError: the worker could not start (its one-line message).
            RequestError: ``model`` cannot be loaded (the worker keeps its model).
        """
        device = device_argument(device)
        wanted = modelKey(model)
        with self._lock:
            if self._client is not None and (not self._client.alive() or self._device != device):
                if not self._client.alive():
                    logging.warning(f"MFFMT: the worker (pid {self._client.pid}) stopped; starting another")
                self._closeClient()
            try:
                if self._client is None:
                    logging.info(f"MFFMT: starting the worker ({device}, model {wanted or 'default'})")
                    self._client = WorkerClient(model=wanted, device=device, python=pythonExecutable(),
                                                env=child_environment(os.environ, coreFolder()),
                                                start_timeout=self.startTimeoutS)
                    self._device, self._model = device, wanted
                    self.starts += 1
                elif self._model != wanted:
                    self._client.load(wanted)
                    self._model = wanted
            except (WorkerError, RequestError) as error:
                # The worker names the model file when the file is what failed (MFFMTError: "PATH: problem").
                if wanted is not None and f"{wanted}: " in str(error):
                    self._unusable[wanted] = (fileStamp(wanted), one_line(str(error)))
                raise
            self._unusable.pop(wanted, None)
            return self._client

    def unusable(self, model: str | os.PathLike) -> str | None:
        """Why the worker could not load ``model`` (checksum, metadata, weights), or None; a file that
        changed since it failed is tried again."""
        key = modelKey(model)
        mark = self._unusable.get(key)
        return mark[1] if mark is not None and mark[0] == fileStamp(key) else None

    def clientLater(self, model: str | os.PathLike | None = None, device: str = "auto") -> Future:
        """:meth:`client` on a helper thread: a future of the worker (done at once when it is ready)."""
        client = self.ready(model, device)
        if client is not None:
            future: Future = Future()
            future.set_result(client)
            return future
        return self._starter.submit(self.client, model, device)

    def _closeClient(self) -> None:
        client, self._client, self._model, self._device = self._client, None, None, None
        if client is not None:
            client.close()

    def close(self) -> None:
        """End the worker (requests still waiting fail); a later request starts a new one."""
        with self._lock:
            self._closeClient()
