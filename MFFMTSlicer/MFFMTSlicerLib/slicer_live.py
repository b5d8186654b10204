"""Live mode: segment and classify a volume whose image keeps changing, frame by frame. Slicer only.

A volume fed by OpenIGTLink (OpenIGTLinkIF updates its image as frames arrive) or the proxy of a
Sequence being played changes its image many times a second. :class:`LiveSession` follows one such
volume: every change of its image is a new frame, copied at once (the feed may change it again
before the network is free) and sent to the logic's warm worker (``segment`` op, in memory). One
frame is in flight at a time and one waits: a frame that arrives while another waits replaces it
(latest frame wins) and is counted as dropped, so a slow network never builds a backlog.

Each result updates, in place: the live lesion segmentation on the volume, a labelled point at the
lesion (class and probability, shown in the slice views), a one-row table, and the running
clip-level finding over the frames so far (:func:`MFFMTCore.base.clip_finding.clip_finding`, the
rule ``mffmt predict`` applies to a clip: lesion-weighted, so only frames with a lesion count).
With ``record``, every processed frame's image, label map and table row are also kept in three
synchronised sequences of a sequence browser, for review after the scan.

Nothing here needs Qt: :meth:`LiveSession.poll` takes over finished results and sends the next
frame; the panel calls it from a timer, tests and scripts call it directly.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

import numpy as np
import slicer
import vtk
from vtk.util import numpy_support

from MFFMTCore.base.clip_finding import ClipResult, clip_finding
from MFFMTCore.base.geometry import ImageGeometry
from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.results_schema import typed_row
from MFFMTCore.serving.client import PendingRequest, WorkerError
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.results import lesion_label
from MFFMTSlicerLib.slicer_prediction import oneLine, withoutPhysicalSizes
from MFFMTSlicerLib.worker import WarmWorker

# Attributes of the live segmentation: the latest frame's label and the running finding (strict JSON).
LIVE_LABEL_ATTRIBUTE = "MFFMT.liveLabel"
LIVE_CLIP_ATTRIBUTE = "MFFMT.liveClip"


def frameGeometry(volumeNode) -> dict[str, Any]:
    """The ``segment`` request's geometry of a one-frame volume: ITK order (LPS), as its NRRD file has it.

    The spacing is sent only when the volume records one, so that a picture's areas stay in pixels.
    """
    geometry = ImageGeometry.from_ijk_to_ras(nodes.ijkToRasArray(volumeNode))
    fields = {"origin": list(geometry.origin), "direction": list(geometry.direction)}
    if nodes.spacingKnown(volumeNode):
        fields["spacing"] = list(geometry.spacing)
    return fields


class RunningFinding:
    """The clip-level finding over the frames processed so far, by the clip rule of ``mffmt predict``."""

    def __init__(self):
        self.classNames: list[str] = []
        self._probabilities: list[list[float]] = []
        self._masses: list[float] = []
        self._flagged: list[bool] = []

    def add(self, frame: dict[str, Any]) -> None:
        """Add one frame's finding (a ``PredictionResult.to_json()["frames"]`` entry)."""
        self.classNames = list(frame["probabilities"])
        # A flagged frame has no probabilities (None); the clip rule leaves it out.
        self._probabilities.append([math.nan if p is None else float(p) for p in frame["probabilities"].values()])
        self._masses.append(float(frame["lesion_mass"]))
        self._flagged.append(bool((frame.get("input_check") or {}).get("flagged")))

    @property
    def framesWithLesion(self) -> int:
        return sum(mass > 0 for mass, flagged in zip(self._masses, self._flagged) if not flagged)

    def finding(self) -> ClipResult | None:
        """The finding, or None while no assessed frame shows a lesion (no evidence about a lesion yet)."""
        if not self.framesWithLesion:
            return None
        masses = np.array(self._masses)
        # The frame sums only pick a key frame when no frame shows a lesion, never the case here.
        return clip_finding(np.array(self._probabilities), masses, self.classNames, masses, self._flagged)


class LiveSession:
    """Follow ``volumeNode`` and segment each new frame through the warm worker.

    Args:
        volumeNode: a scalar volume of one frame whose image keeps changing.
        worker: the logic's warm worker.
        workerReady: the future of :meth:`WarmWorker.clientLater` for the model and device to use.
        model, device: what to ask for again when the worker has to be restarted.
        threshold: lesion threshold (None: the model's).
        record: keep every processed frame's image, label map and row in sequences.
        resultCallback: called with the session after each processed frame.

    Counts: ``received`` (new images seen), ``processed``, ``dropped`` (replaced by a newer frame
    before being sent, or left when stopped) and ``failed`` (the worker refused the frame; the
    message is in ``lastError``). After :meth:`stop`, received = processed + dropped + failed.
    """

    def __init__(self, volumeNode, worker: WarmWorker, workerReady: Future, model=None, device: str = "auto",
                 threshold: float | None = None, record: bool = False,
                 resultCallback: Callable[[LiveSession], None] | None = None):
        if volumeNode is None or not volumeNode.IsA("vtkMRMLScalarVolumeNode") or volumeNode.IsA(
                "vtkMRMLLabelMapVolumeNode"):
            raise ValueError("live mode follows an image volume: choose the OpenIGTLink image or a sequence's volume")
        self.volumeNode = volumeNode
        self.scene = volumeNode.GetScene()
        self.worker, self.model, self.device, self.threshold = worker, model, device, threshold
        self.resultCallback = resultCallback
        self._workerReady = workerReady
        self.received = self.processed = self.dropped = self.failed = 0
        self.lastError: str | None = None
        self.lastRow: dict[str, Any] | None = None
        self.finding = RunningFinding()
        self.running = True
        self._pending: tuple[int, np.ndarray, np.ndarray, dict[str, Any]] | None = None
        self._inFlight: tuple[PendingRequest, int, np.ndarray, np.ndarray] | None = None
        self._stamp = None
        self._lastFrame: np.ndarray | None = None
        name = volumeNode.GetName()
        self.segmentationNode = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                            self.scene.GenerateUniqueName(f"{name} live lesion"))
        self.segmentationNode.CreateDefaultDisplayNodes()
        self.segmentId = nodes.attachToInput(self.segmentationNode, volumeNode)
        self.tableNode = nodes.addResultNode(self.segmentationNode, volumeNode, "vtkMRMLTableNode",
                                             f"{name} live MFFMT", nodes.TABLE_ROLE)
        self.pointsNode = nodes.addResultNode(self.segmentationNode, volumeNode, "vtkMRMLMarkupsFiducialNode",
                                              f"{name} live finding", nodes.POINTS_ROLE)
        self.browserNode = self._makeRecording(name) if record else None
        self._observers = [volumeNode.AddObserver(event, self._onImageModified)
                           for event in (slicer.vtkMRMLVolumeNode.ImageDataModifiedEvent, vtk.vtkCommand.ModifiedEvent)]
        # What it shows now was there before Start: not a new frame.
        self._stamp = self._imageStamp()
        if volumeNode.GetImageData() is not None:
            self._lastFrame = nodes.volumeArray(volumeNode).copy()

    # ------------------------------------------------------------------------------- frames in

    def _imageStamp(self):
        image = self.volumeNode.GetImageData()
        if image is None:
            return None
        scalars = image.GetPointData().GetScalars()
        return image.GetAddressAsString(""), image.GetMTime(), scalars.GetMTime() if scalars is not None else 0

    def _onImageModified(self, caller, event) -> None:
        stamp = self._imageStamp()
        if stamp is None or stamp == self._stamp:
            return  # a change of name, display or attributes, or the same image seen through both events
        self._stamp = stamp
        try:
            frame = nodes.volumeArray(self.volumeNode)
            if frame.ndim != 3 or frame.shape[0] != 1:
                raise ValueError(f"{self.volumeNode.GetName()}: live mode needs one 2D frame, got {frame.shape}")
        except ValueError as error:
            self.received += 1
            self.failed += 1
            self.lastError = str(error)
            return
        # One new image can raise several events (a browser's proxy: new image, then its update);
        # the same pixels again are no new frame.
        if self._lastFrame is not None and np.array_equal(frame, self._lastFrame):
            return
        self._lastFrame = frame.copy()
        self.received += 1
        if self._pending is not None:
            self.dropped += 1  # latest frame wins
        self._pending = (self.received, self._lastFrame, nodes.ijkToRasArray(self.volumeNode),
                         frameGeometry(self.volumeNode))

    # ----------------------------------------------------------------------------- poll

    def poll(self) -> bool:
        """Take over a finished result and send the waiting frame; whether a result was shown."""
        if not self.running:
            return False
        if not self.scene.IsNodePresent(self.volumeNode):
            self.stop()
            return False
        shown = False
        if self._inFlight is not None and self._inFlight[0].done():
            shown = self._takeResult()
        if self._inFlight is None and self._pending is not None and self._workerReady.done():
            self._send()
        return shown

    def wait(self, timeoutS: float = 60.0) -> None:
        """Poll until no frame is waiting or in flight (for scripts and tests).

        Raises:
            TimeoutError: frames are still waiting after ``timeoutS`` seconds.
        """
        deadline = time.monotonic() + timeoutS
        while self.running and (self._pending is not None or self._inFlight is not None):
            self.poll()
            if time.monotonic() > deadline:
                raise TimeoutError(f"live mode: frames still waiting after {timeoutS} s")
            if self._inFlight is not None:
                try:
                    self._inFlight[0].wait(0.05)
                except Exception:
                    pass
            else:
                time.sleep(0.01)

    def _send(self) -> None:
        index, frame, ijkToRas, geometry = self._pending
        self._pending = None
        try:
            client = self._workerReady.result()
            fields = {"maps": ["label"], "source": self.volumeNode.GetName(), **geometry}
            if self.threshold is not None:
                fields["threshold"] = float(self.threshold)
            request = client.submit("segment", arrays={"image": frame}, **fields)
        except Exception as error:  # the worker did not start or has died: ask for it again
            self.failed += 1
            self.lastError = oneLine(error)
            self._workerReady = self.worker.clientLater(self.model, self.device)
            return
        self._inFlight = (request, index, frame, ijkToRas)

    def _takeResult(self) -> bool:
        request, index, frame, ijkToRas = self._inFlight
        self._inFlight = None
        try:
            reply = request.wait(0)
        except WorkerError as error:
            self.failed += 1
            self.lastError = oneLine(error)
            self._workerReady = self.worker.clientLater(self.model, self.device)
            return False
        except Exception as error:
            self.failed += 1
            self.lastError = oneLine(error)
            return False
        row = typed_row(reply.rows[0])
        if not nodes.spacingKnown(self.volumeNode):
            withoutPhysicalSizes(row)
        row["frame"] = index
        label = reply.maps["label"].reshape(frame.shape).astype(np.uint8)
        self.finding.add(reply.result["frames"][0])
        self.processed += 1
        self.lastRow = row
        self._show(label, ijkToRas, row)
        if self.browserNode is not None:
            self._record(index, frame, label, ijkToRas)
        if self.resultCallback:
            self.resultCallback(self)
        return True

    # --------------------------------------------------------------------------- results out

    def _show(self, label: np.ndarray, ijkToRas: np.ndarray, row: dict[str, Any]) -> None:
        """Put one frame's result into the live nodes, in place."""
        # Not slicer.util.updateSegmentBinaryLabelmapFromArray: its temporary label volume leaves a
        # display node in the scene at every call, which frame after frame adds up.
        lesion = slicer.vtkOrientedImageData()
        lesion.SetDimensions(label.shape[2], label.shape[1], label.shape[0])
        lesion.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        numpy_support.vtk_to_numpy(lesion.GetPointData().GetScalars())[:] = (label != 0).ravel()
        lesion.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        logic = slicer.vtkSlicerSegmentationsModuleLogic
        if not logic.SetBinaryLabelmapToSegment(lesion, self.segmentationNode, self.segmentId, logic.MODE_REPLACE):
            raise RuntimeError(f"{self.segmentationNode.GetName()}: the lesion could not be updated")
        nodes.fillResultsTable(self.tableNode, [row])
        nodes.fillLesionPoints(self.pointsNode, [row])
        self.segmentationNode.SetAttribute(LIVE_LABEL_ATTRIBUTE, lesion_label(row))
        clip = self.finding.finding()
        self.segmentationNode.SetAttribute(LIVE_CLIP_ATTRIBUTE, json.dumps(
            json_safe(clip.to_json() if clip is not None else None), allow_nan=False))

    def runningSummary(self) -> str:
        """The running finding in words, e.g. "malignant 0.81 over 12 frames with a lesion"."""
        clip = self.finding.finding()
        if clip is None:
            return "no lesion seen yet"
        return (f"{clip.prediction} {clip.probabilities.get(clip.prediction, math.nan):.2f} "
                f"over {clip.frames_with_lesion} frame{'s' if clip.frames_with_lesion != 1 else ''} with a lesion")

    def _makeRecording(self, name: str):
        """A sequence browser with the sequences of frames, label maps and rows, indexed by frame number."""
        browser = self.scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode",
                                               self.scene.GenerateUniqueName(f"{name} live recording"))
        self._sequences = {}
        for key, title in (("image", "frames"), ("label", "label maps"), ("row", "results")):
            sequence = self.scene.AddNewNodeByClass("vtkMRMLSequenceNode",
                                                    self.scene.GenerateUniqueName(f"{name} live {title}"))
            sequence.SetIndexName("frame")
            sequence.SetIndexUnit("")
            sequence.SetIndexType(slicer.vtkMRMLSequenceNode.NumericIndex)
            if key == "image":
                browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
            else:
                browser.AddSynchronizedSequenceNodeID(sequence.GetID())
            self._sequences[key] = sequence
        return browser

    def _record(self, index: int, frame: np.ndarray, label: np.ndarray, ijkToRas: np.ndarray) -> None:
        """Add one processed frame to the recording (the sequences keep copies of the nodes given)."""
        value = str(index)
        image = slicer.vtkMRMLScalarVolumeNode()
        labelmap = slicer.vtkMRMLLabelMapVolumeNode()
        for node, array in ((image, frame), (labelmap, label)):
            imageData = vtk.vtkImageData()
            node.SetAndObserveImageData(imageData)
            slicer.util.updateVolumeFromArray(node, array)
            node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        self._sequences["image"].SetDataNodeAtValue(image, value)
        self._sequences["label"].SetDataNodeAtValue(labelmap, value)
        table = slicer.vtkMRMLTableNode()
        nodes.fillResultsTable(table, [self.lastRow])
        self._sequences["row"].SetDataNodeAtValue(table, value)

    def recordedSequences(self) -> dict[str, Any]:
        """The recording's sequences: "image", "label" and "row" (empty without ``record``)."""
        return dict(self._sequences) if self.browserNode is not None else {}

    # ------------------------------------------------------------------------------------ stop

    def stop(self) -> None:
        """Stop following the volume; the live nodes keep the last processed frame's result.

        A frame waiting or in flight is dropped. With a recording, the browser shows its first frame.
        """
        if not self.running:
            return
        self.running = False
        for tag in self._observers:
            self.volumeNode.RemoveObserver(tag)
        self._observers = []
        if self._pending is not None:
            self._pending = None
            self.dropped += 1
        if self._inFlight is not None:
            self._inFlight[0].cancel()
            self._inFlight = None
            self.dropped += 1
        if self.browserNode is not None and self.scene.IsNodePresent(self.browserNode):
            if self._sequences["image"].GetNumberOfDataNodes():
                self.browserNode.SetSelectedItemNumber(0)
                slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(self.browserNode)


class LiveLogic:
    """Live mode of the logic; ``self.worker`` and ``self.requireRequirements`` come from the logic."""

    worker: WarmWorker
    live: LiveSession | None = None

    def startLive(self, volumeNode, model=None, threshold: float | None = None, device: str = "auto",
                  record: bool = False, resultCallback: Callable[[LiveSession], None] | None = None) -> LiveSession:
        """Start following ``volumeNode`` (stopping a session already running); returns the session.

        A sequence node stands for the volume its sequence browser plays it in.

        The worker starts (or loads ``model``) in the background; frames that arrive meanwhile wait
        as any other (latest wins). Call :meth:`LiveSession.poll` often (the panel does, from a timer).

        Raises:
            ValueError: not an image volume; RuntimeError: missing packages.
        """
        self.stopLive()
        if volumeNode is not None and volumeNode.IsA("vtkMRMLSequenceNode"):
            volumeNode = self.sequenceProxy(volumeNode)
        if self.worker.ready(model, device) is None:
            self.requireRequirements()
        self.live = LiveSession(volumeNode, self.worker, self.worker.clientLater(model, device), model, device,
                                threshold, record, resultCallback)
        return self.live

    @staticmethod
    def sequenceProxy(sequenceNode):
        """The volume a sequence browser shows the frames of ``sequenceNode`` in (what plays when it plays).

        Raises:
            ValueError: no sequence browser shows the sequence.
        """
        browser = slicer.modules.sequences.logic().GetFirstBrowserNodeForSequenceNode(sequenceNode)
        proxy = browser.GetProxyNode(sequenceNode) if browser is not None else None
        if proxy is None:
            raise ValueError(f"{sequenceNode.GetName()}: show it in a sequence browser to play it live")
        return proxy

    def stopLive(self) -> LiveSession | None:
        """Stop the running live session, if any; returns it (its nodes stay in the scene)."""
        session, self.live = self.live, None
        if session is not None:
            session.stop()
        return session
