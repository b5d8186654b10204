"""The logic's segment & classify: the warm worker runs ``mffmt predict`` on a volume or sequence, results into the scene. Slicer only.

:meth:`PredictionLogic.startProcessing` writes the input to a temporary working folder and asks the
logic's warm ``mffmt serve`` worker (:mod:`MFFMTSlicerLib.worker`) to run its ``predict`` op
on it, and returns a :class:`PredictionTask`; when the request ends, the task loads the
segmentation, the probability volume (for re-thresholding), a results table, labelled points and
the Grad-CAM heat map next to the input. :meth:`PredictionLogic.process` does the same and waits.
A volume loaded through Slicer's DICOM module from an ultrasound file is predicted from that file
instead, with its calibration and a DICOM SEG and SR (:mod:`MFFMTSlicerLib.slicer_dicom_source`).

Why the ``predict`` op (files) rather than ``segment`` (arrays in memory): it is ``mffmt predict``'s
own code (``predict_files``), so the files, rows, threshold and ROI handling are those of the
command line by construction, and the scene import stays the one a saved ``mffmt predict`` output
gets; the files cost a few hundredths of a second on one frame. The live mode, where every frame
counts, uses ``segment`` (:mod:`MFFMTSlicerLib.slicer_live`).
"""

import json
import logging
import math
import os
import queue
import shutil
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MFFMTCore.base.geometry import ImageGeometry, ras_to_lps
from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.results_schema import (
    document_rows,
    document_threshold,
    finished_outputs,
    read_results_document,
    typed_row,
)
from MFFMTCore.base.roi import PhysicalBox, resolve_roi
from MFFMTCore.base.thresholds import check_threshold
from MFFMTCore.errors import one_line
from MFFMTCore.serving.client import PendingRequest
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.commands import predict_request
from MFFMTSlicerLib.progress import PredictProgress
from MFFMTSlicerLib.results import (
    apply_measurements,
    frame_measurements,
    key_frame,
    lesion_free_frames,
)
from MFFMTSlicerLib.slicer_dicom_source import (
    DICOM_FILE_ATTRIBUTES,
    DicomDatabase,
    DicomSource,
    applySourceGeometry,
    findDicomSource,
    keepDicomResults,
    resultEntry,
)
from MFFMTSlicerLib.tasks import BackgroundTask, makeWorkFolder
from MFFMTSlicerLib.worker import WarmWorker

# Attributes of a result segmentation: its result rows (strict JSON) and the threshold they reflect.
RESULTS_ATTRIBUTE = "MFFMT.resultRows"
THRESHOLD_ATTRIBUTE = "MFFMT.threshold"


def oneLine(error: BaseException) -> str:
    """An error of the worker or its start as the one-line message the user sees."""
    return one_line(error) or type(error).__name__


def withoutPhysicalSizes(row: dict[str, Any]) -> dict[str, Any]:
    """A row of an input without a physical pixel spacing (a picture): no mm² and no mm diameters."""
    row.update(lesion_area_mm2=math.nan, long_axis_mm=math.nan, perpendicular_axis_mm=math.nan)
    return row


class WorkerRequestTask(BackgroundTask):
    """A ``predict`` request to the warm worker, followed like a background command.

    The worker is made ready (started, or told to load the model) on a helper thread; the request is
    sent at the first :meth:`poll` after that. Progress events arrive on the client's reader thread
    and are taken over in :meth:`poll`, on the caller's thread. Cancel asks the worker to stop the
    request at its next chunk of frames and waits for it (a worker that does not stop in
    ``CANCEL_WAIT_S`` is closed), so nothing is written into the working folder after the task ended.

    Args:
        worker: the logic's warm worker.
        workerReady: the future of :meth:`WarmWorker.clientLater`.
        fields: the ``predict`` request's fields (:func:`MFFMTSlicerLib.commands.predict_request`).
    """

    name = "mffmt predict (worker)"
    CANCEL_WAIT_S = 10.0

    def __init__(self, worker: WarmWorker, workerReady: futures.Future, fields: dict[str, Any], **kwargs):
        super().__init__(process=None, **kwargs)
        self.worker = worker
        self.fields = fields
        self.progress = PredictProgress()
        self.request: PendingRequest | None = None
        self._workerReady = workerReady
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._startError: BaseException | None = None

    def _poll(self) -> None:
        if self.request is None and self._startError is None and self._workerReady.done():
            try:
                self.request = self._workerReady.result().submit("predict", progress=self._events.put, **self.fields)
            except Exception as error:  # the worker did not start, the model did not load, or it just died
                self._startError = error
        while True:
            try:
                self.progress.update(self._events.get_nowait())
            except queue.Empty:
                break

    def _ended(self) -> bool:
        return self._startError is not None or (self.request is not None and self.request.done())

    def _idle(self, intervalS: float) -> None:
        if self.request is None:
            futures.wait([self._workerReady], intervalS)
            return
        try:
            self.request.wait(intervalS)
        except Exception:
            pass

    def _stop(self) -> None:
        if self.request is None:
            self._workerReady.cancel()  # a start under way goes on: the next run uses the worker
            return
        self.request.cancel()
        try:
            self.request.wait(self.CANCEL_WAIT_S)
        except TimeoutError:
            logging.warning(f"MFFMT: the worker did not stop request {self.request.id}; closing it")
            self.worker.close()
        except Exception:
            pass

    def _finish(self) -> None:
        self.reply()
        self.status = "done"

    def reply(self):
        """The request's final reply.

        Raises:
            RuntimeError: the worker did not start, or answered with an error, or stopped (one line).
        """
        if self._startError is not None:
            raise RuntimeError(oneLine(self._startError)) from self._startError
        try:
            reply = self.request.wait(0)
        except Exception as error:
            raise RuntimeError(oneLine(error)) from error
        self.progress.update(reply.message)
        return reply


class PredictionTask(WorkerRequestTask):
    """One segment & classify run on one volume.

    When ``status`` is "done", ``segmentationNode`` and ``results`` (one row per frame) hold the
    outcome; otherwise ``error`` says what went wrong and no result node is left in the scene.
    """

    def __init__(self, inputVolume, inputPath: Path, threshold: float | None, gradcam: bool,
                 dicomSource: DicomSource | None = None, dicomResultsFolder: Path | None = None, **kwargs):
        super().__init__(**kwargs)
        self.inputVolume = inputVolume
        self.inputPath = inputPath
        self.threshold = threshold
        self.gradcam = gradcam
        self.dicomSource = dicomSource or DicomSource(None)
        self.dicomResultsFolder = dicomResultsFolder
        self.segmentationNode = None
        self.results: list[dict[str, Any]] = []
        # One-line notes for the user: calibration not available, DICOM results not written, ...
        self.notes: list[str] = [self.dicomSource.note] if self.dicomSource.note else []

    def _finish(self) -> None:
        self.reply()
        created: list = []
        try:
            self._importResults(created)
        except Exception:
            for node in created:  # no half-loaded result stays behind
                node.GetScene().RemoveNode(node)
            raise
        self.status = "done"

    def _importResults(self, created: list) -> None:
        """Load the outputs of the finished run as nodes next to the input volume."""
        outputDir = self.workDir / "output"
        volume = self.inputVolume
        key = str(self.inputPath)  # predict names inputs by the absolute path it was given
        document = read_results_document(outputDir, required=True)  # read once: rows, files and threshold
        rows = [row for row in document_rows(document) if row["input"] == key]
        failed = next((row["error"] for row in rows if row["error"]), None)
        files = finished_outputs(document).get(key)
        if failed or not rows or not files:
            raise RuntimeError(failed or f"mffmt predict wrote no result for {self.inputPath}")
        fromDicom = self.dicomSource.path is not None
        entry = resultEntry(outputDir, key) if fromDicom else {}
        for note in entry.get("notes", []):  # calibration cut or ignored, DICOM results not written
            logging.warning(f"MFFMT: {volume.GetName()}: {note}")
            self.notes.append(note)
        spacingKnown = bool(entry["geometry"]["spacing_known"]) if fromDicom else nodes.spacingKnown(volume)
        for row in rows:
            row["input"] = volume.GetName()
            if not spacingKnown:  # written as NRRD, but the image itself has no physical spacing
                withoutPhysicalSizes(row)
        segmentation = nodes.loadLesionSegmentation(files["segmentation"], volume)
        created.append(segmentation)
        segmentation.SetAttribute(nodes.SPACING_KNOWN_ATTRIBUTE, "1" if spacingKnown else "0")
        probability = nodes.loadHiddenVolume(files["probability"], f"{volume.GetName()} lesion probability", volume)
        created.append(probability)
        segmentation.SetNodeReferenceID(nodes.PROBABILITY_ROLE, probability.GetID())
        results = (("vtkMRMLTableNode", "MFFMT", nodes.TABLE_ROLE), ("vtkMRMLMarkupsFiducialNode", "finding", nodes.POINTS_ROLE),
                   *(("vtkMRMLMarkupsLineNode", name, role)
                     for name, role in zip(("long axis", "perpendicular axis"), nodes.CALIPER_ROLES)))
        for className, name, role in results:
            created.append(nodes.addResultNode(segmentation, volume, className, f"{volume.GetName()} {name}", role))
        if self.gradcam and "gradcam" in files:
            heatmap = nodes.loadHiddenVolume(files["gradcam"], f"{volume.GetName()} Grad-CAM", volume)
            created.append(heatmap)
            segmentation.SetNodeReferenceID(nodes.GRADCAM_ROLE, heatmap.GetID())
            nodes.showHeatmap(volume, heatmap)
        # The rows hold mffmt predict's measurements; only the key frame's caliper ends are measured here.
        frame = key_frame(rows)
        calipers = [] if frame is None else frame_measurements(
            nodes.volumeArray(probability)[frame:frame + 1], document_threshold(document),
            nodes.ijkToRasArray(probability), spacingKnown, first_frame=frame)[0]["calipers"]
        showResults(segmentation, rows, self.threshold, calipers)
        if fromDicom:  # the volume takes its source's calibrated geometry, which the results have
            kept = keepDicomResults(files, self.dicomResultsFolder / self.workDir.name)
            for name, path in kept.items():
                segmentation.SetAttribute(DICOM_FILE_ATTRIBUTES[name], str(path))
            applySourceGeometry(volume, entry["geometry"])
        self.segmentationNode, self.results = segmentation, rows


def showResults(segmentationNode: vtkMRMLSegmentationNode, rows: list[dict[str, Any]], threshold: float | None,
                calipers: list[dict[str, Any]]) -> None:
    """Write ``rows`` into the run's table, points and caliper lines (the key frame's, as
    :func:`frame_measurements` gives them) and remember them on the segmentation."""
    nodes.fillResultsTable(segmentationNode.GetNodeReference(nodes.TABLE_ROLE), rows)
    nodes.fillLesionPoints(segmentationNode.GetNodeReference(nodes.POINTS_ROLE), rows)
    nodes.fillCaliperLines([segmentationNode.GetNodeReference(role) for role in nodes.CALIPER_ROLES], calipers)
    segmentationNode.SetAttribute(RESULTS_ATTRIBUTE, json.dumps(json_safe(rows), allow_nan=False))
    if threshold is not None:
        segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))


def isResultSegmentation(segmentationNode: vtkMRMLSegmentationNode) -> bool:
    """Whether a segmentation was made by this module (rather than drawn by a user)."""
    return bool(segmentationNode.GetAttribute(RESULTS_ATTRIBUTE))


class PredictionLogic:
    """Segment and classify. ``self.workRoot`` (the folder for temporary working folders),
    ``self.worker`` (the warm worker) and ``self.requireRequirements`` come from the logic."""

    workRoot: Path
    worker: WarmWorker
    # Slicer's DICOM database, where volumes loaded from DICOM find their source files (tests replace it).
    dicomDatabase = DicomDatabase()

    @property
    def dicomResultsFolder(self) -> Path:
        """Where the DICOM SEG and SR of volumes predicted from their DICOM source are kept: beside
        the models folder, one subfolder per run."""
        return self.modelsFolder.parent / "DICOM results"

    @staticmethod
    def inputVolume(inputNode) -> vtkMRMLScalarVolumeNode:
        """The volume to process: the node itself, or a clip volume made from a sequence's frames.

        Raises:
            ValueError: no node, or a node that is neither an image volume nor a sequence.
        """
        if inputNode is None:
            raise ValueError("no input: choose an ultrasound image, clip or sequence")
        if inputNode.IsA("vtkMRMLSequenceNode"):
            return nodes.clipFromSequence(inputNode)
        if not inputNode.IsA("vtkMRMLScalarVolumeNode") or inputNode.IsA("vtkMRMLLabelMapVolumeNode"):
            raise ValueError(f"{inputNode.GetName()}: not an image volume or a sequence")
        return inputNode

    @staticmethod
    def roiBox(roiNode: vtkMRMLMarkupsROINode, volumeNode: vtkMRMLScalarVolumeNode) -> tuple[int, int, int, int]:
        """The pixel box (x, y, w, h) of each frame of ``volumeNode`` that a markups ROI covers.

        Pixels whose centre lies inside count, as ``mffmt predict`` counts them for a physical box.

        Raises:
            ValueError: the volume is transformed (harden the transform first) or the ROI misses it.
        """
        if volumeNode.GetParentTransformNode() is not None:
            raise ValueError(f"{volumeNode.GetName()}: harden its transform before using an ROI")
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        width, height, _ = volumeNode.GetImageData().GetDimensions()
        box = PhysicalBox(ras_to_lps(bounds[0::2]), ras_to_lps(bounds[1::2]))
        return resolve_roi(box, ImageGeometry.from_ijk_to_ras(nodes.ijkToRasArray(volumeNode)), (height, width))

    def startProcessing(self, inputNode, model: str | os.PathLike | None = None, threshold: float | None = None,
                        roiNode=None, gradcam: bool = False, device: str = "auto",
                        progressCallback: Callable[[PredictionTask], None] | None = None,
                        completedCallback: Callable[[PredictionTask], None] | None = None,
                        keepFiles: bool = False) -> PredictionTask:
        """Start segmenting the lesion and classifying it in each frame of a volume or sequence.

        Args:
            inputNode: scalar volume (one frame or a clip of frames) or sequence node of 2D frames.
            model: model file; None uses the default model.
            threshold: lesion probability threshold; None uses the model's.
            roiNode: optional markups ROI; only pixels inside are classified (the paper's protocol).
            gradcam: also show a Grad-CAM heat map of the malignant class over the input.
            device: a ``--device`` value or a device of the panel (see :func:`MFFMTSlicerLib.commands.device_argument`).
            progressCallback: called with the task whenever progress is read.
            completedCallback: called with the task when it has finished, failed or been cancelled.
            keepFiles: keep the temporary working folder (input and ``mffmt predict`` output).

        Returns:
            The running task: :meth:`PredictionTask.poll` it (the panel does, from a timer) or
            :meth:`PredictionTask.wait` for it.

        Raises:
            ValueError: bad input; RuntimeError: missing packages.
        """
        volume = self.inputVolume(inputNode)
        if self.worker.ready(model, device) is None:  # a running worker has them: skip the check's 50 ms
            self.requireRequirements()
        roi = self.roiBox(roiNode, volume) if roiNode is not None else None
        source = findDicomSource(volume, self.dicomDatabase)
        if source.note:
            logging.warning(f"MFFMT: {source.note}")
        workDir = makeWorkFolder(self.workRoot)
        try:
            inputPath = source.path or nodes.writeVolumeNode(volume, workDir / "input.nrrd").absolute()
            fields = predict_request([inputPath], workDir / "output", lesion_threshold=threshold, roi=roi, gradcam=gradcam,
                                     dicom=source.path is not None)
            workerReady = self.worker.clientLater(model, device)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        task = PredictionTask(volume, inputPath, threshold, gradcam, source, self.dicomResultsFolder,
                              worker=self.worker, workerReady=workerReady,
                              fields=fields, workDir=workDir, progressCallback=progressCallback,
                              completedCallback=completedCallback, keepFiles=keepFiles)
        task.poll()  # a warm worker gets the request now
        return task

    def process(self, inputNode, model: str | os.PathLike | None = None, threshold: float | None = None,
                roiNode=None, gradcam: bool = False, device: str = "auto"
                ) -> tuple[vtkMRMLSegmentationNode, list[dict[str, Any]]]:
        """:meth:`startProcessing` and wait: (segmentation node, one result row per frame).

        The rows hold p_benign, p_malignant, prediction, lesion area (mm² only where the input
        records a pixel spacing) and centroid (LPS).

        Raises:
            ValueError: bad input; RuntimeError: missing packages or ``mffmt predict`` failed.
        """
        task = self.startProcessing(inputNode, model, threshold, roiNode, gradcam, device).wait()
        if task.status != "done":
            raise RuntimeError(task.error or f"prediction {task.status}")
        return task.segmentationNode, task.results

    def addDicomResultsToDatabase(self, segmentationNode: vtkMRMLSegmentationNode) -> list[Path]:
        """Add the DICOM SEG and SR of a result predicted from a DICOM source to Slicer's DICOM database;
        the files added.

        Raises:
            ValueError: the result has no DICOM SEG and SR (its input was not a DICOM ultrasound file).
        """
        files = [Path(path) for path in (segmentationNode.GetAttribute(attribute)
                                         for attribute in DICOM_FILE_ATTRIBUTES.values()) if path]
        if not files:
            raise ValueError(f"{segmentationNode.GetName()}: no DICOM SEG and SR (its input was not predicted "
                             "from an ultrasound DICOM file)")
        for path in files:
            self.dicomDatabase.insert(path)
        return files

    @staticmethod
    def cancel(task: BackgroundTask) -> None:
        """Stop a running task; it ends with status "cancelled" and leaves no node or file behind."""
        task.cancel()

    @staticmethod
    def results(segmentationNode: vtkMRMLSegmentationNode) -> list[dict[str, Any]]:
        """The result rows of a segmentation made by :meth:`process` (as the threshold left them)."""
        text = segmentationNode.GetAttribute(RESULTS_ATTRIBUTE) if segmentationNode else None
        if not text:
            raise ValueError(f"{segmentationNode.GetName() if segmentationNode else 'None'}: not an MFFMT result")
        return [typed_row(row) for row in json.loads(text)]

    def updateThreshold(self, segmentationNode: vtkMRMLSegmentationNode, threshold: float) -> list[dict[str, Any]]:
        """Redraw a result at another lesion threshold without running the network; the new rows.

        The classification stays; lesion area, component count, centroid, table and points follow.
        """
        threshold = check_threshold(threshold)
        rows = self.results(segmentationNode)
        lesionFree = lesion_free_frames(rows)
        probability = nodes.rethreshold(segmentationNode, threshold, lesionFree)
        probabilityNode = segmentationNode.GetNodeReference(nodes.PROBABILITY_ROLE)
        spacingKnown = segmentationNode.GetAttribute(nodes.SPACING_KNOWN_ATTRIBUTE) != "0"
        measurements = frame_measurements(probability, threshold, nodes.ijkToRasArray(probabilityNode), spacingKnown,
                                          lesionFree)
        rows = apply_measurements(rows, measurements)
        frame = key_frame(rows)
        showResults(segmentationNode, rows, threshold, [] if frame is None else measurements[frame]["calipers"])
        return rows

    def startProcessingFolder(self, inputDir: str | os.PathLike, outputDir: str | os.PathLike,
                              model: str | os.PathLike | None = None, threshold: float | None = None,
                              roi: Sequence[int] | None = None, gradcam: bool = False, device: str = "cpu",
                              overwrite: bool = False,
                              progressCallback: Callable[[BackgroundTask], None] | None = None,
                              completedCallback: Callable[[BackgroundTask], None] | None = None
                              ) -> WorkerRequestTask:
        """Start segmenting and classifying every image file in a folder (recursively) into ``outputDir``.

        The warm worker runs ``mffmt predict``'s batched path (frames of several files per network
        call) and writes what it writes (per input ``<stem>.seg.nrrd``, probability, overlay,
        Grad-CAM; results.csv and results.json). A rerun skips inputs an earlier run finished unless
        ``overwrite``. :meth:`cancel` stops it at the next network call: the inputs already written
        keep their files and rows, the ones in flight leave nothing.

        Returns:
            The running task (``task.progress`` counts the inputs): poll it, wait for it or cancel it.

        Raises:
            ValueError: the folder does not exist; RuntimeError: missing packages.
        """
        inputDir = Path(inputDir)
        if not inputDir.is_dir():
            raise ValueError(f"{inputDir}: not a folder")
        self.requireRequirements()
        fields = predict_request([inputDir], outputDir, lesion_threshold=threshold, roi=roi, gradcam=gradcam,
                                 overwrite=overwrite)
        workDir = makeWorkFolder(self.workRoot)  # nothing is written there: every task has one
        task = WorkerRequestTask(worker=self.worker, workerReady=self.worker.clientLater(model, device), fields=fields,
                                 workDir=workDir, progressCallback=progressCallback,
                                 completedCallback=completedCallback)
        task.poll()  # a warm worker gets the request now
        return task

    def processFolder(self, inputDir: str | os.PathLike, outputDir: str | os.PathLike,
                      model: str | os.PathLike | None = None, threshold: float | None = None,
                      roi: Sequence[int] | None = None, gradcam: bool = False, device: str = "cpu",
                      overwrite: bool = False, progressCallback: Callable[[PredictProgress], None] | None = None
                      ) -> list[dict[str, Any]]:
        """:meth:`startProcessingFolder` and wait: one row per frame of every input (an input that
        failed has a row with its error).

        Raises:
            ValueError: the folder does not exist; RuntimeError: the run failed as a whole.
        """
        task = self.startProcessingFolder(
            inputDir, outputDir, model, threshold, roi, gradcam, device, overwrite,
            progressCallback=(lambda task: progressCallback(task.progress)) if progressCallback else None).wait()
        if task.status != "done":  # failed inputs do not fail the run: their rows say why
            raise RuntimeError(task.error or f"prediction {task.status}")
        return document_rows(read_results_document(outputDir, required=True))

    def closeWorker(self) -> None:
        """End the warm worker (the next run starts another); call it when the logic is no longer used."""
        self.worker.close()
