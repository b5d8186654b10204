"""The logic's warm ``mffmt serve`` worker: started on first use, reused, restarted, closed. Slicer only.

Starting a process that imports torch and loads the model takes seconds; segmenting a frame takes a
tenth of one. So the module keeps one ``mffmt serve`` worker (:class:`MFFMTCore.serving.client.WorkerClient`,
which needs no torch in Slicer's process) for all its segment & classify work and live frames:

- started on first use, with Slicer's Python and the environment the commands get
  (:func:`MFFMTSlicerLib.tasks.pythonExecutable`, :func:`MFFMTSlicerLib.commands.child_environment`);
- reused while it lives, started again when it has died (crashed, killed) or the device changes;
- told to ``load`` another model when one is asked for (a model that cannot be loaded is an error
  and the worker keeps the one it had);
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

from MFFMTCore.serving.client import WorkerClient
from MFFMTSlicerLib.commands import child_environment, device_argument
from MFFMTSlicerLib.tasks import coreFolder, pythonExecutable


def modelKey(model: str | os.PathLike | None) -> str | None:
    """How a requested model is compared: its absolute path, or None for the default model."""
    return None if model is None else str(Path(model).resolve())


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
            return self._client

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
