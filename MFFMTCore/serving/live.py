"""Live segmentation over OpenIGTLink: each IMAGE frame a server sends comes back segmented.

Device names (OpenIGTLink allows 20 characters; 3D Slicer's OpenIGTLinkIF names its nodes after them):

- in: IMAGE messages from any device (or only ``input_device``), except our own outputs. A
  message is one frame: k size 1, grey or RGB(A), any scalar type, any geometry.
- out ``MFFMTLabel`` (``label_device``): IMAGE, uint8 label map (1 = lesion) with the frame's size,
  IJK-to-world matrix and coordinate system, so it lies exactly on the frame.
- out ``MFFMTResult`` (``result_device``): STRING, one JSON object: ``timestamp`` and
  ``source_device`` of the frame, ``prediction``, ``probabilities``, ``p_malignant``,
  ``lesion_present`` and ``p_lesion`` (the model's frame-level lesion decision), ``lesion_area_px``,
  ``lesion_area_mm2``, ``centroid`` (LPS mm), ``model``, ``seconds`` (compute time) and the running
  counts ``frames_received``, ``frames_dropped``, ``frames_failed``. A frame that cannot be
  segmented gets ``{"timestamp", "source_device", "error"}`` here and no label map.
- in ``MFFMTModel`` (``model_device``): STRING holding a model file path: use that model from the
  next frame on (only with ``allow_model_swap``; otherwise, or if it cannot be loaded, the reply
  on ``MFFMTResult`` is ``{"error": ...}`` and the current model stays).

Both replies carry the timestamp of the frame they were computed from, in their header and, for
the STRING, in its JSON. Latest frame wins: frames that arrive while one is being segmented wait in
a queue of ``queue_size`` (default 1); older waiting frames are dropped and counted.
"""

from __future__ import annotations

import itertools
import json
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import numpy as np
import pyigtl
import SimpleITK as sitk

from MFFMTCore.errors import MFFMTError, one_line
from MFFMTCore.inference.imaging_region import STREAM_IMAGING_REGION_CHOICES
from MFFMTCore.inference.predictor import Predictor
from MFFMTCore.serving.igtl import IgtlClient, MalformedMessage
from MFFMTCore.serving.latest import LatestItems

LABEL_DEVICE = "MFFMTLabel"
RESULT_DEVICE = "MFFMTResult"
MODEL_DEVICE = "MFFMTModel"
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def frame_image(message: pyigtl.ImageMessage) -> sitk.Image:
    """The frame of an IMAGE message as a one-slice SimpleITK volume with the message's geometry (LPS).

    A 3D one-slice volume, not a 2D image, so that a frame placed anywhere in space (a tracked
    probe) keeps its orientation, and its areas are measured in its own plane.

    Raises:
        MFFMTError: zero-size, more than one frame, unusable components, non-finite pixels or a
            degenerate geometry.
    """
    device = message.device_name
    pixels = message.image
    if pixels is None or pixels.ndim not in (3, 4) or 0 in pixels.shape:
        raise MFFMTError(f"IMAGE {device!r}", f"zero-size or empty image {None if pixels is None else list(pixels.shape)}")
    if pixels.shape[0] != 1:
        raise MFFMTError(f"IMAGE {device!r}", f"expected one frame, got {pixels.shape[0]} slices")
    components = pixels.shape[3] if pixels.ndim == 4 else 1
    if components not in (1, 3, 4):
        raise MFFMTError(f"IMAGE {device!r}", f"{components} components per pixel (expected 1, 3 or 4)")
    pixels = pixels.astype(pixels.dtype.newbyteorder("="), copy=False).reshape(pixels.shape[:3] + (components,) * (components > 1))
    if pixels.dtype.kind == "f" and not np.isfinite(pixels).all():
        raise MFFMTError(f"IMAGE {device!r}", "non-finite pixel values")
    matrix = np.asarray(message.ijk_to_world_matrix, dtype=np.float64)
    if message.world_coordinate_system == "ras":
        matrix = _RAS_TO_LPS @ matrix
    axes = matrix[:3, :3].copy()
    spacing = np.linalg.norm(axes, axis=0)
    if not np.isfinite(matrix).all() or min(spacing[0], spacing[1]) <= 0:
        raise MFFMTError(f"IMAGE {device!r}", f"degenerate geometry (IJK-to-world matrix {matrix[:3].tolist()})")
    if spacing[2] <= 0:
        # A single slice needs no slice spacing; some senders leave the k axis zero.
        normal = np.cross(axes[:, 0], axes[:, 1])
        axes[:, 2], spacing[2] = normal / np.linalg.norm(normal), 1.0
    image = sitk.GetImageFromArray(np.ascontiguousarray(pixels), isVector=components > 1)
    image.SetSpacing(spacing.tolist())
    image.SetOrigin(matrix[:3, 3].tolist())
    try:
        image.SetDirection((axes / spacing).ravel().tolist())
    except RuntimeError as error:
        raise MFFMTError(f"IMAGE {device!r}", f"degenerate geometry (axes {axes.tolist()})") from error
    return image


class LiveSegmenter:
    """Segment the frames an OpenIGTLink server sends and send the results back to it.

    Args:
        predictor: the model.
        host, port: the OpenIGTLink server (PLUS, Slicer's OpenIGTLinkIF in server mode, a scanner).
        input_device: segment only IMAGE messages of this device; None for any device.
        threshold: lesion threshold; default the model's.
        imaging_region: ``"auto"``: each frame's scan rectangle is detected (a screen grab's borders,
            text and panels are left out); ``"none"``: the whole frame, for a source that sends the
            B-mode scan itself (no search: about 3.5 ms less per 480x640 frame on this project's CPU).
        queue_size: frames kept waiting while one is segmented (older ones are dropped).
        workers: frames segmented at the same time, each in its own thread. On a CPU, two workers
            with one torch thread each keep two cores busier than one worker with two threads (a
            single frame does not split well over cores). Results still go out in the order their
            frames came; one finished after a newer frame's result went out is dropped (counted).
        allow_model_swap: accept model paths on ``model_device``.
        label_device, result_device, model_device: device names (see the module's docstring).
        log: called with one-line status messages (connection, errors).
    """

    def __init__(
        self,
        predictor: Predictor,
        host: str,
        port: int,
        input_device: str | None = None,
        threshold: float | None = None,
        imaging_region: str = "auto",
        queue_size: int = 1,
        allow_model_swap: bool = False,
        label_device: str = LABEL_DEVICE,
        result_device: str = RESULT_DEVICE,
        model_device: str = MODEL_DEVICE,
        workers: int = 1,
        log: Callable[[str], None] = lambda text: print(text, file=sys.stderr, flush=True),
    ):
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        if imaging_region not in STREAM_IMAGING_REGION_CHOICES:
            raise ValueError(f"imaging_region must be one of {STREAM_IMAGING_REGION_CHOICES}, got {imaging_region!r}")
        for name in (label_device, result_device, model_device):
            if len(name.encode("utf-8")) > 20:
                raise MFFMTError(name, "device name longer than OpenIGTLink's 20 bytes")
        self.predictor = predictor
        self.input_device, self.threshold, self.imaging_region = input_device, threshold, imaging_region
        self.allow_model_swap = allow_model_swap
        self.label_device, self.result_device, self.model_device = label_device, result_device, model_device
        self.log = log
        self.workers = workers
        # Frames waiting, numbered in arrival order (the number decides which result is newest).
        self.frames: LatestItems[tuple[int, pyigtl.ImageMessage]] = LatestItems(queue_size)
        self._arrivals = itertools.count()
        self.segmented = 0  # frames whose results were sent
        self.late = 0  # results dropped because a newer frame's result had gone out (workers > 1)
        self.failed = 0  # frames that could not be segmented (error replies)
        self.malformed = 0  # messages whose body could not be read
        self.unsent = 0  # results computed while the connection was down
        self._newest_sent = -1
        self._count_lock = threading.Lock()  # counters and the order of results, across workers
        self._model_request: str | None = None
        self._model_lock = threading.Lock()
        self._stop = threading.Event()
        self.client = IgtlClient(host, port, self._received, self._malformed, self._connection)

    # Reader thread -------------------------------------------------------------------------------

    def _received(self, message: pyigtl.MessageBase) -> None:
        if message.message_type == "IMAGE":
            if message.device_name in (self.label_device,) or (
                self.input_device is not None and message.device_name != self.input_device
            ):
                return
            self.frames.put((next(self._arrivals), message))
        elif message.message_type == "STRING" and message.device_name == self.model_device:
            if not self.allow_model_swap:
                self._send_error(message.timestamp, message.device_name,
                                 "model swap refused: start mffmt live with --allow-model-swap to allow it")
                return
            with self._model_lock:
                self._model_request = message.string.strip()

    def _malformed(self, error: MalformedMessage) -> None:
        self.malformed += 1
        self.log(f"mffmt live: skipped a malformed message: {error}")
        if error.message_type == "IMAGE":
            self._fail(time.time(), error.device_name, str(error))

    def _connection(self, connected: bool) -> None:
        where = f"{self.client.host}:{self.client.port}"
        self.log(f"mffmt live: connected to {where}" if connected else f"mffmt live: lost {where}; reconnecting")

    # Segmenting thread ---------------------------------------------------------------------------

    def _fail(self, timestamp: float, source_device: str, error: str) -> None:
        """Count a frame that could not be segmented and say why on the result device."""
        with self._count_lock:
            self.failed += 1
        self._send_error(timestamp, source_device, error)

    def _send_error(self, timestamp: float, source_device: str, error: str) -> None:
        text = json.dumps({"timestamp": timestamp, "source_device": source_device, "error": one_line(error)},
                          allow_nan=False)
        if not self.client.send(pyigtl.StringMessage(text, timestamp=timestamp, device_name=self.result_device)):
            self.unsent += 1

    def _swap_model(self) -> None:
        with self._model_lock:
            path, self._model_request = self._model_request, None
        if path is None:
            return
        try:
            self.predictor = Predictor(path or None, device=str(self.predictor.device), batch_size=self.predictor.batch_size)
        except (ValueError, FileNotFoundError, OSError) as error:
            self._send_error(time.time(), self.model_device, f"model not changed: {error}")
            return
        self.log(f"mffmt live: now using model {self.predictor.model_path}")

    def segment(self, message: pyigtl.ImageMessage) -> tuple[pyigtl.ImageMessage, pyigtl.StringMessage]:
        """The label map and result messages for one frame (raises MFFMTError for an unusable frame)."""
        started = time.perf_counter()
        predictor = self.predictor  # one model for the whole frame, even if a swap comes meanwhile
        # The replies carry areas and centroids, not the lesions' axes: they are not measured.
        result = predictor.predict(frame_image(message), threshold=self.threshold, imaging_region=self.imaging_region,
                                   measurements=False)
        frame = result.frames[0]
        label = pyigtl.ImageMessage(
            result.label.reshape(message.image.shape[:3]),
            ijk_to_world_matrix=message.ijk_to_world_matrix,
            world_coordinate_system=message.world_coordinate_system,
            timestamp=message.timestamp,
            device_name=self.label_device,
        )
        summary = {
            "timestamp": message.timestamp,
            "source_device": message.device_name,
            "prediction": frame.prediction,
            "probabilities": frame.probabilities,
            "p_malignant": frame.p_malignant,
            "lesion_present": frame.lesion_present,
            "p_lesion": frame.p_lesion,
            "lesion_area_px": frame.lesion_area_px,
            "lesion_area_mm2": frame.lesion_area_mm2,
            "centroid": list(frame.centroid) if frame.centroid is not None else None,
            "model": predictor.info.name,
            "seconds": round(time.perf_counter() - started, 4),
            "frames_received": self.frames.received,
            "frames_dropped": self.frames.dropped + self.late,
            "frames_failed": self.failed,
        }
        text = json.dumps(summary, allow_nan=False)
        return label, pyigtl.StringMessage(text, timestamp=message.timestamp, device_name=self.result_device)

    def step(self, timeout: float = 0.2) -> bool:
        """Segment the next waiting frame and send its results; False when none came within ``timeout``."""
        item = self.frames.get(timeout)
        self._swap_model()  # after the wait: a swap asked for before this frame came applies to it
        if item is None:
            return False
        arrival, message = item
        try:
            replies = self.segment(message)
        except MFFMTError as error:
            self._fail(message.timestamp, message.device_name, str(error))
            return True
        except Exception as error:  # a bug on one frame must not end a live session
            traceback.print_exc(file=sys.stderr)
            self._fail(message.timestamp, message.device_name, f"{type(error).__name__}: {error}")
            return True
        with self._count_lock:  # held while sending, so that results leave in arrival order
            if arrival < self._newest_sent:
                self.late += 1
                return True
            self._newest_sent = arrival
            self.segmented += 1
            if not self.client.send(*replies):
                self.unsent += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {"connected": self.client.connected, "connections": self.client.connections,
                "frames_received": self.frames.received, "frames_segmented": self.segmented,
                "frames_dropped": self.frames.dropped + self.late, "frames_failed": self.failed,
                "messages_malformed": self.malformed, "results_unsent": self.unsent}

    def run(self, report_every: float = 10.0, report: Callable[[dict[str, Any]], None] | None = None) -> None:
        """Connect and segment frames until :meth:`stop` (from another thread or a signal handler).

        Args:
            report_every: seconds between two calls of ``report``.
            report: called with :meth:`stats` every ``report_every`` seconds and once at the end.
        """
        self.client.start()
        last = time.monotonic()
        helpers = [threading.Thread(target=self._work, name=f"mffmt-live-worker-{number}", daemon=True)
                   for number in range(1, self.workers)]
        for helper in helpers:
            helper.start()
        try:
            while not self._stop.is_set():
                self.step()
                if report is not None and time.monotonic() - last >= report_every:
                    last = time.monotonic()
                    report(self.stats())
        finally:
            self._stop.set()
            for helper in helpers:
                helper.join()
            self.client.stop()
            if report is not None:
                report(self.stats())

    def _work(self) -> None:
        while not self._stop.is_set():
            self.step()

    def stop(self) -> None:
        self._stop.set()

