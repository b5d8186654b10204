"""The long-lived inference worker behind ``mffmt serve``: a model loaded once, requests answered in turn.

Requests and replies travel as described in :mod:`MFFMTCore.serving.protocol`. Ops:

- ``{"op": "info"}`` -> ``{"event": "info", "model": {...}, "protocol": 1, "version": ..., "device": the one
  the network runs on, "devices": [those present]}``.
- ``{"op": "predict", "inputs": [files or folders], "output": DIR, "threshold"?, "roi"? [x, y, w, h],
  "gradcam"?, "overwrite"?, "dicom"?}``: exactly what ``mffmt predict`` does (same files, same results.csv and
  results.json, same reruns). Progress: ``{"event": "progress", "done", "total", "input", "status",
  "message"}`` after each input (the fields of ``mffmt predict --progress json``'s events) and ``{"event":
  "progress", "input", "frames_done", "frames_total"}`` within a clip. Final: ``{"event": "done",
  "total", "done", "skipped", "failed", "output", "outcomes": [{input, stem, status, error, outputs,
  seconds}]}``.
- ``{"op": "segment", "arrays": [{"name": "image", ...}], "spacing"?, "origin"?, "direction"?,
  "threshold"?, "roi"?, "gradcam"?, "maps"? ["label", "probability", "gradcam"], "source"?}``: one
  frame or clip held in memory (array layouts of :func:`MFFMTCore.inference.frames.as_frame_stack`,
  geometry in ITK order). Final: ``{"event": "result", "result": PredictionResult.to_json(), "rows":
  [the results.csv rows], "model": {...}}`` with the requested maps attached ("label" by default),
  each with the input's frame layout: (H, W) for a frame, (N, H, W) for a clip.
- ``{"op": "load", "model": PATH or null}``: replace the model (null: the default one). The
  requests before it finish with the old model; if the new one cannot be loaded the old one stays
  and the reply is an error. Final: ``{"event": "loaded", "model": {...}}``.
- ``{"op": "cancel", "target": ID}``: the request ``ID`` (queued or running) ends with ``{"event":
  "cancelled"}`` at its next chunk of frames; inputs it finished keep their files. No reply of its own.

A request that cannot be served gets ``{"event": "error", "error": "one line"}`` and the next one is
served. Requests run one at a time in arrival order (the network uses all the cores it is given).
The worker says ``{"id": null, "event": "ready", ...}`` once the model is loaded, and exits with
status 0 when its stdin closes (the client went away), cancelling what was left.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any

import numpy as np

from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.devices import present_devices
from MFFMTCore.errors import one_line
from MFFMTCore.inference.batch import _model_document, find_inputs, predict_files
from MFFMTCore.inference.outputs import DEFAULT_OUTPUTS
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.inference.results_table import frame_rows
from MFFMTCore.serving.protocol import PROTOCOL_VERSION, ProtocolError, read_message, write_message
from MFFMTCore.version import __version__

MAPS = ("label", "probability", "gradcam")


class RequestCancelled(BaseException):
    """Raised from a request's progress callback once its client cancelled it.

    A BaseException, as KeyboardInterrupt is, so that the batch runner's ``except Exception`` (one
    bad input must not stop a batch) does not record a cancel as a failed input.
    """


def _optional(message: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = message.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool) and kind is not bool):
        raise ValueError(f"'{key}' must be {getattr(kind, '__name__', kind)}, got {value!r}")
    return value


def _threshold(message: dict[str, Any]) -> float | None:
    """The request's lesion threshold (None: the model's), refused once for the whole request when bad."""
    value = message.get("threshold")
    return None if value is None else check_threshold(value, "'threshold'")


def _roi(message: dict[str, Any]) -> tuple[int, int, int, int] | None:
    roi = _optional(message, "roi", list)
    if roi is None:
        return None
    if len(roi) != 4 or not all(isinstance(v, int) and not isinstance(v, bool) for v in roi) or min(roi[2:]) <= 0:
        raise ValueError(f"'roi' must be [x, y, w, h] whole pixels with w and h positive, got {roi!r}")
    return tuple(roi)


class Worker:
    """Serve requests from ``reader`` with replies to ``writer`` until the reader ends.

    Args:
        reader: binary stream of requests (the worker's stdin).
        writer: binary stream of replies (the worker's stdout, and nothing else may write to it).
        model_path: model file; None for the default model.
        device: a ``--device`` value (:mod:`MFFMTCore.base.devices`); one this computer lacks is refused
            in one line before the ``ready`` message, as a model that cannot be loaded is.
        batch_size: frames per network call.
    """

    def __init__(
        self,
        reader: IO[bytes],
        writer: IO[bytes],
        model_path: str | os.PathLike | None = None,
        device: str = "auto",
        batch_size: int = 8,
    ):
        self.reader, self.writer = reader, writer
        self.model_path, self.device, self.batch_size = model_path, device, batch_size
        self.predictor: Predictor | None = None
        self._write_lock = threading.Lock()
        self._requests: queue.Queue[tuple[dict[str, Any], dict[str, np.ndarray]] | None] = queue.Queue()
        self._cancel: dict[Any, threading.Event] = {}  # id -> cancel flag of each queued or running request
        self._cancel_lock = threading.Lock()

    def send(self, message: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write one reply; the reader thread and the serving thread both reply."""
        with self._write_lock:
            write_message(self.writer, message, arrays)

    def run(self) -> int:
        """Load the model, serve until the client goes away. Returns the exit status."""
        try:
            self.predictor = Predictor(self.model_path, device=self.device, batch_size=self.batch_size)
        except (ValueError, FileNotFoundError) as error:
            self.send({"id": None, "event": "error", "error": one_line(error)})
            return 2
        self.predictor.warm_up()  # before "ready": the first request then runs at a warm worker's speed
        self.send({"id": None, "event": "ready", "model": _model_document(self.predictor),
                   "protocol": PROTOCOL_VERSION, "version": __version__, "pid": os.getpid(), **self._devices()})
        threading.Thread(target=self._read_requests, name="mffmt-serve-reader", daemon=True).start()
        try:
            while (item := self._requests.get()) is not None:
                self._serve(*item)
        except (BrokenPipeError, ValueError) as error:
            # The reply stream is gone (ValueError: written to a closed file): so is the client.
            print(f"mffmt serve: client went away ({type(error).__name__})", file=sys.stderr)
        return 0

    def _read_requests(self) -> None:
        """Reader thread: queue requests, apply cancels at once, end the queue at end of input.

        Whatever ends this thread (end of input, a broken pipe, a bug), the queue is ended too, so
        the worker never waits for requests that can no longer come.
        """
        try:
            while (item := self._read_one()) is not None:
                self._accept(*item)
        finally:
            with self._cancel_lock:
                for flag in self._cancel.values():
                    flag.set()
            self._requests.put(None)

    def _read_one(self) -> tuple[dict[str, Any], dict[str, np.ndarray]] | None:
        """The next well-formed message; a malformed one is answered with an error and skipped.

        None at the end of input, and when reading keeps failing (the stream is unusable).
        """
        failures = 0
        while failures < 3:
            try:
                return read_message(self.reader)
            except ProtocolError as error:
                self._reply_error(error.request_id, str(error))
                continue
            except OSError:
                return None  # the input pipe broke: the client is gone
            except Exception as error:  # MemoryError, a closed stream...: answered, never fatal at once
                if getattr(self.reader, "closed", False):
                    return None
                failures += 1
                self._reply_error(None, f"protocol: message cannot be read ({type(error).__name__}: {error})")
        return None

    def _accept(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        """Apply a cancel, or queue a request (refusing one without a usable id)."""
        if message.get("op") == "cancel":
            with self._cancel_lock:
                flag = self._cancel.get(message.get("target"))
            if flag is not None:
                flag.set()
            return
        request_id = message.get("id")
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            self._reply_error(request_id, "every request needs an 'id' (a string or a whole number)")
            return
        with self._cancel_lock:
            if request_id in self._cancel:
                self._reply_error(request_id, f"request id {request_id!r} is already in use")
                return
            self._cancel[request_id] = threading.Event()
        self._requests.put((message, arrays))

    def _reply_error(self, request_id: Any, text: str) -> None:
        # An id that is not a string or a whole number is not echoed: the reply must be strict JSON.
        if not isinstance(request_id, str | int) or isinstance(request_id, bool):
            request_id = None
        try:
            self.send({"id": request_id, "event": "error", "error": one_line(text)[:2000]})
        except (BrokenPipeError, ValueError):
            pass  # the client is gone; the serving thread notices at its next reply

    def _serve(self, message: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
        request_id = message.get("id")
        with self._cancel_lock:
            flag = self._cancel[request_id]

        def check(*_: Any) -> None:
            if flag.is_set():
                raise RequestCancelled

        handlers = {"info": self._info, "load": self._load, "predict": self._predict, "segment": self._segment}
        try:
            handler = handlers.get(message.get("op"))
            if handler is None:
                raise ValueError(f"unknown op {message.get('op')!r}; expected one of {', '.join(handlers)}, cancel")
            check()
            reply, reply_arrays = handler(request_id, message, arrays, check)
            self.send({"id": request_id, **reply}, reply_arrays)
        except RequestCancelled:
            self.send({"id": request_id, "event": "cancelled"})
        except (ValueError, FileNotFoundError) as error:
            self._reply_error(request_id, str(error))
        except Exception as error:  # a bug on one request must not take the worker down for the next
            traceback.print_exc(file=sys.stderr)
            self._reply_error(request_id, f"{type(error).__name__}: {error}")
        finally:
            with self._cancel_lock:
                self._cancel.pop(request_id, None)

    def _info(self, request_id: Any, message: dict, arrays: dict, check: Callable) -> tuple[dict, None]:
        return {"event": "info", "model": _model_document(self.predictor), "protocol": PROTOCOL_VERSION,
                "version": __version__, **self._devices()}, None

    def _devices(self) -> dict[str, Any]:
        """The device the network runs on and those this computer has (for a device list)."""
        return {"device": self.predictor.device.type, "devices": list(present_devices())}

    def _load(self, request_id: Any, message: dict, arrays: dict, check: Callable) -> tuple[dict, None]:
        model = _optional(message, "model", str)
        self.predictor = Predictor(model, device=self.device, batch_size=self.batch_size)
        return {"event": "loaded", "model": _model_document(self.predictor)}, None

    def _predict(self, request_id: Any, message: dict, arrays: dict, check: Callable) -> tuple[dict, None]:
        inputs, output = _optional(message, "inputs", list), _optional(message, "output", str)
        if not inputs or not all(isinstance(path, str) for path in inputs) or not output:
            raise ValueError("'predict' needs 'inputs' (a list of paths) and 'output' (a folder)")

        def frames_done(image: str, done: int, total: int) -> None:
            check()
            self.send({"id": request_id, "event": "progress", "input": image,
                       "frames_done": done, "frames_total": total})

        def input_done(outcome: Any, done: int, total: int) -> None:
            self.send({"id": request_id, "event": "progress", "done": done, "total": total,
                       "input": outcome.input, "status": outcome.status, "message": outcome.error})

        threshold = _threshold(message)
        paths = find_inputs(inputs, exclude=output)
        outputs = [*DEFAULT_OUTPUTS, *(["dicom"] if message.get("dicom") else [])]
        summary = predict_files(self.predictor, paths, output, threshold=threshold,
                                roi=_roi(message), gradcam=bool(message.get("gradcam")),
                                overwrite=bool(message.get("overwrite")), progress=input_done,
                                outputs=outputs, frames_progress=frames_done)
        counts = {status: sum(o.status == status for o in summary.outcomes) for status in ("done", "skipped", "failed")}
        return {"event": "done", "total": len(paths), **counts, "output": output,
                "outcomes": [asdict(outcome) for outcome in summary.outcomes]}, None

    def _segment(self, request_id: Any, message: dict, arrays: dict, check: Callable) -> tuple[dict, dict]:
        if "image" not in arrays:
            raise ValueError("'segment' needs an array named 'image' attached")
        maps = _optional(message, "maps", list)
        maps = ["label"] if maps is None else maps
        if any(name not in MAPS for name in maps):
            raise ValueError(f"'maps' may name {', '.join(MAPS)}, got {maps!r}")
        gradcam = bool(message.get("gradcam")) or "gradcam" in maps

        def frames_done(done: int, total: int) -> None:
            check()
            if total > done:  # a frame's only chunk ends with its result: no progress event for it
                self.send({"id": request_id, "event": "progress", "frames_done": done, "frames_total": total})

        result = self.predictor.predict(
            arrays["image"],
            spacing=_optional(message, "spacing", list),
            origin=_optional(message, "origin", list),
            direction=_optional(message, "direction", list),
            roi=_roi(message),
            gradcam=gradcam,
            threshold=_threshold(message),
            progress=frames_done,
        )
        source = _optional(message, "source", str) or result.source
        layout = slice(None) if not result.is_2d else 0  # a frame's maps come back as (H, W)
        values = {"label": result.label, "probability": result.probability, "gradcam": result.gradcam}
        reply = {"event": "result", "result": result.to_json() | {"source": source},
                 "rows": frame_rows(result, source), "model": _model_document(self.predictor)}
        return reply, {name: values[name][layout] for name in maps}
