"""A client for ``mffmt serve`` that needs only the standard library and NumPy (no torch).

It starts the worker as its child process, so that importing torch and loading the model happen
once, in the worker, and a 3D Slicer module (or any script) can ask for results in a fraction of a
second without importing torch itself::

    from MFFMTCore.serving.client import WorkerClient

    with WorkerClient(model="model.safetensors", threads=2) as worker:
        reply = worker.segment(frame, spacing=[0.1, 0.1])           # (H, W) NumPy frame
        reply.maps["label"], reply.rows[0]["p_malignant"]
        worker.predict(["scan.nrrd"], "results/")                     # as `mffmt predict` does

        pending = worker.submit("segment", arrays={"image": clip})  # without waiting
        pending.cancel()

Requests may come from several threads; the worker answers them one at a time. The worker runs in a
process group of its own and is stopped as a group (:mod:`MFFMTCore.base.process_group`): where the
command is a launcher (3D Slicer's ``PythonSlicer`` starts the real Python as its child), closing
the client also ends the Python under it.
"""

from __future__ import annotations

import itertools
import os
import queue
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from MFFMTCore.base.process_group import group_options, stop_group
from MFFMTCore.serving.protocol import FINAL_EVENTS, ProtocolError, read_message, write_message


class WorkerError(RuntimeError):
    """The worker could not be started, or it stopped while requests were waiting."""


class RequestError(ValueError):
    """The worker answered a request with an error (the text is the worker's one-line message)."""


class RequestCancelledError(RuntimeError):
    """The request was cancelled before it finished."""


@dataclass
class Reply:
    """The final reply to a request.

    Args:
        message: the reply's JSON object (``event`` and the op's fields).
        maps: arrays attached to it (name -> array).
    """

    message: dict[str, Any]
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def result(self) -> dict[str, Any]:
        """A ``segment`` reply's ``PredictionResult.to_json()``."""
        return self.message["result"]

    @property
    def rows(self) -> list[dict[str, Any]]:
        """A ``segment`` reply's results.csv rows, one per frame."""
        return self.message["rows"]


class PendingRequest:
    """A request sent to the worker whose final reply may not have come yet."""

    def __init__(self, client: WorkerClient, request_id: str, progress: Callable[[dict[str, Any]], None] | None):
        self.id = request_id
        self._client = client
        self._progress = progress
        self._done = threading.Event()
        self._reply: Reply | None = None
        self._failure: BaseException | None = None

    def _deliver(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        if message.get("event") not in FINAL_EVENTS:
            if self._progress is not None:
                try:
                    self._progress(message)
                except Exception:  # the reader thread must live on: every other request waits on it
                    traceback.print_exc(file=sys.stderr)
            return
        if message["event"] == "error":
            self._failure = RequestError(message.get("error", "unknown error"))
        elif message["event"] == "cancelled":
            self._failure = RequestCancelledError(f"request {self.id} was cancelled")
        else:
            self._reply = Reply(message, arrays)
        self._done.set()

    def _fail(self, error: BaseException) -> None:
        self._failure = error
        self._done.set()

    def done(self) -> bool:
        """Whether the final reply has come (poll this from a GUI timer instead of waiting)."""
        return self._done.is_set()

    def cancel(self) -> None:
        """Ask the worker to stop this request at its next chunk of frames."""
        if not self.done():
            self._client._send({"id": f"{self.id}-cancel", "op": "cancel", "target": self.id})

    def wait(self, timeout: float | None = None) -> Reply:
        """The final reply.

        Raises:
            TimeoutError: no final reply within ``timeout`` seconds (the request goes on).
            RequestError: the worker answered with an error.
            RequestCancelledError: the request was cancelled.
            WorkerError: the worker stopped.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"request {self.id}: no reply within {timeout} s")
        if self._failure is not None:
            raise self._failure
        return self._reply


def worker_command(model: str | os.PathLike | None = None, threads: int | None = None,
                   device: str = "auto", python: str = sys.executable) -> list[str]:
    """The command line that starts a worker."""
    command = [python, "-m", "MFFMTCore", "serve", "--device", device]
    if model is not None:
        command += ["--model", str(model)]
    if threads is not None:
        command += ["--threads", str(threads)]
    return command


class WorkerClient:
    """Start ``mffmt serve`` as a child process and talk to it.

    Args:
        model: model file for the worker; None for the default model.
        threads: CPU threads for the worker's network (default: torch's choice).
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`); one the worker's computer lacks
            is a WorkerError with the worker's one-line reason.
        python: the Python that runs the worker (one where MFFMTCore and torch are installed).
        command: the full command that starts a worker, instead of the one built from the above.
        env: environment of the worker (default: this process's).
        stderr: where the worker's log goes (a file object; default: this process's stderr).
        start_timeout: seconds to wait for the model to be loaded.

    Raises:
        WorkerError: the worker did not start or could not load the model (the worker's message).
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        threads: int | None = None,
        device: str = "auto",
        python: str = sys.executable,
        command: Sequence[str] | None = None,
        env: dict[str, str] | None = None,
        stderr: Any = None,
        start_timeout: float = 300.0,
    ):
        self.command = list(command) if command is not None else worker_command(model, threads, device, python)
        self._pending: dict[str, PendingRequest] = {}
        self._lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._ready: queue.Queue[dict[str, Any]] = queue.Queue()
        self._closed = False
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=stderr, env=env, **group_options())
        except OSError as error:
            raise WorkerError(f"cannot start the worker ({' '.join(self.command)}): {error}") from error
        threading.Thread(target=self._read_replies, name="mffmt-worker-replies", daemon=True).start()
        try:
            first = self._ready.get(timeout=start_timeout)
        except queue.Empty:
            self.close()
            raise WorkerError(f"the worker did not load its model within {start_timeout} s") from None
        if first.get("event") != "ready":
            self.close()
            raise WorkerError(f"the worker did not start: {first.get('error', first)}")
        self.model: dict[str, Any] = first["model"]
        self.pid: int = self.process.pid

    def _read_replies(self) -> None:
        """Reader thread: hand each reply to its request; fail them all when the worker stops."""
        while True:
            try:
                item = read_message(self.process.stdout)
            except ProtocolError as error:
                item = ({"id": error.request_id, "event": "error", "error": str(error)}, {})
            except (OSError, ValueError):
                item = None
            if item is None:
                break
            message, arrays = item
            request_id = message.get("id")
            if request_id is None:
                self._ready.put(message)
                continue
            if not isinstance(request_id, str):
                continue  # an answer to a request that did not come from us (ours have string ids)
            with self._lock:
                pending = self._pending.get(request_id)
                if pending is not None and message.get("event") in FINAL_EVENTS:
                    del self._pending[request_id]
            if pending is not None:
                pending._deliver(message, arrays)
        status = self.process.wait()
        self._ready.put({"event": "error", "error": f"worker exited with status {status}"})
        with self._lock:
            waiting, self._pending = list(self._pending.values()), {}
        for pending in waiting:
            pending._fail(WorkerError(f"the worker stopped (exit status {status}) before answering"))

    def _send(self, message: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        with self._send_lock:
            try:
                write_message(self.process.stdin, message, arrays)
            except (BrokenPipeError, ValueError) as error:
                raise WorkerError(f"the worker is not running ({type(error).__name__})") from error

    def alive(self) -> bool:
        """Whether the worker process is still running (the Slicer module restarts a dead one)."""
        return self.process.poll() is None

    def submit(
        self,
        op: str,
        arrays: dict[str, np.ndarray] | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        **fields: Any,
    ) -> PendingRequest:
        """Send a request without waiting for its reply.

        Args:
            op: ``"info"``, ``"load"``, ``"predict"`` or ``"segment"`` (see :mod:`MFFMTCore.serving.worker`).
            arrays: arrays to attach (``{"image": frame}`` for ``segment``).
            progress: called with each progress event, in the client's reader thread (keep it
                short; an exception it raises is printed and otherwise ignored).
            fields: the op's fields.
        """
        pending = PendingRequest(self, f"r{next(self._ids)}", progress)
        with self._lock:
            self._pending[pending.id] = pending
        try:
            self._send({"id": pending.id, "op": op, **fields}, arrays)
        except WorkerError:
            with self._lock:
                self._pending.pop(pending.id, None)
            raise
        return pending

    def request(self, op: str, arrays: dict[str, np.ndarray] | None = None,
                progress: Callable[[dict[str, Any]], None] | None = None,
                timeout: float | None = None, **fields: Any) -> Reply:
        """Send a request and wait for its final reply (see :meth:`PendingRequest.wait`)."""
        return self.submit(op, arrays, progress, **fields).wait(timeout)

    def info(self) -> dict[str, Any]:
        """The worker's model (path, name, class names, input size, threshold, ...)."""
        return self.request("info").message["model"]

    def load(self, model: str | os.PathLike | None) -> dict[str, Any]:
        """Make the worker use another model from its next request on; returns the new model's description.

        Raises:
            RequestError: the model cannot be loaded (the worker keeps its current one).
        """
        self.model = self.request("load", model=None if model is None else str(model)).message["model"]
        return self.model

    def segment(
        self,
        image: np.ndarray,
        spacing: Sequence[float] | None = None,
        origin: Sequence[float] | None = None,
        direction: Sequence[float] | None = None,
        threshold: float | None = None,
        roi: Sequence[int] | None = None,
        gradcam: bool = False,
        maps: Sequence[str] = ("label",),
        source: str | None = None,
        progress: Callable[[dict[str, Any]], None] | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Segment and classify a frame or clip held in memory.

        Args:
            image: (H, W), (H, W, 3|4), (N, H, W) or (N, H, W, 3|4) pixels.
            spacing, origin, direction: geometry in ITK order (column, row[, frame]), direction row-major.
            threshold: lesion threshold (default: the model's).
            roi: [x, y, w, h] pixel box to classify.
            gradcam: also compute Grad-CAM.
            maps: which maps to return: "label" (uint8), "probability", "gradcam" (float32).
            source: the name results rows give the input.

        Returns:
            ``reply.result`` (the prediction as ``mffmt predict`` records it), ``reply.rows`` (its
            results.csv rows) and ``reply.maps`` (shaped as the input's frames: (H, W) or (N, H, W)).
        """
        fields = {"spacing": spacing, "origin": origin, "direction": direction, "threshold": threshold,
                  "roi": roi, "gradcam": gradcam, "maps": list(maps), "source": source}
        fields = {key: list(value) if isinstance(value, tuple) else value for key, value in fields.items()
                  if value is not None}
        return self.request("segment", {"image": image}, progress, timeout, **fields)

    def predict(self, inputs: Sequence[str | os.PathLike], output: str | os.PathLike, threshold: float | None = None,
                roi: Sequence[int] | None = None, gradcam: bool = False, overwrite: bool = False,
                progress: Callable[[dict[str, Any]], None] | None = None, timeout: float | None = None) -> Reply:
        """Run ``mffmt predict`` on files and folders into ``output``; ``reply.message`` summarises it."""
        fields = {"inputs": [str(path) for path in inputs], "output": str(output), "gradcam": gradcam,
                  "overwrite": overwrite}
        if threshold is not None:
            fields["threshold"] = threshold
        if roi is not None:
            fields["roi"] = list(roi)
        return self.request("predict", None, progress, timeout, **fields)

    def close(self, timeout: float = 10.0) -> int:
        """End the worker: close its input (it cancels what is running and exits) and wait for it.

        Returns:
            The worker's exit status. When it does not exit within ``timeout`` s, its process group
            is terminated, then killed; whatever it started and left behind is killed too.
        """
        if not self._closed:
            self._closed = True
            with self._send_lock:
                try:
                    self.process.stdin.close()
                except OSError:
                    pass  # already broken: the worker is gone
        return stop_group(self.process, grace_s=2.0, wait_s=timeout)

    def __enter__(self) -> WorkerClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
