"""The logic's segment & classify: ``mffmt predict`` on a volume or sequence, results into the scene. Slicer only.

:meth:`PredictionLogic.startProcessing` writes the input to a temporary working folder, starts
``mffmt predict`` and returns a :class:`PredictionTask`; when the command ends, the task loads the
segmentation, the probability volume (for re-thresholding), a results table, labelled points and
the Grad-CAM heat map next to the input. :meth:`PredictionLogic.process` does the same and waits.
"""

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from slicer import vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MFFMTCore.base.geometry import ImageGeometry, ras_to_lps
from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.roi import PhysicalBox, resolve_roi
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.commands import predict_command
from MFFMTSlicerLib.progress import PredictProgress, parse_event_line
from MFFMTSlicerLib.results import (
    apply_measurements,
    frame_measurements,
    key_frame,
    lesion_free_frames,
    normalise_row,
    read_output_files,
    read_result_rows,
    read_threshold,
)
from MFFMTSlicerLib.slicer_tasks import (
    BackgroundTask,
    makeWorkFolder,
    processError,
    pythonExecutable,
    startCommand,
)

# Attributes of a result segmentation: its result rows (strict JSON) and the threshold they reflect.
RESULTS_ATTRIBUTE = "MFFMT.resultRows"
THRESHOLD_ATTRIBUTE = "MFFMT.threshold"


class PredictionTask(BackgroundTask):
    """One run of ``mffmt predict`` on one volume.

    When ``status`` is "done", ``segmentationNode`` and ``results`` (one row per frame) hold the
    outcome; otherwise ``error`` says what went wrong and no result node is left in the scene.
    """

    name = "mffmt predict"

    def __init__(self, inputVolume, inputPath: Path, threshold: float | None, gradcam: bool, **kwargs):
        super().__init__(**kwargs)
        self.inputVolume = inputVolume
        self.inputPath = inputPath
        self.threshold = threshold
        self.gradcam = gradcam
        self.progress = PredictProgress()
        self.segmentationNode = None
        self.results: list[dict[str, Any]] = []

    def _poll(self) -> None:
        for line in self.process.read_lines():
            event = parse_event_line(line)
            if event is None:
                logging.info(f"mffmt predict: {line}")
                continue
            self.progress.update(event)
            self.error = self.progress.error or "; ".join(self.progress.failures.values()) or self.error

    def _finish(self) -> None:
        if self.process.returncode != 0:
            raise RuntimeError(self.error or processError("mffmt predict", self.process))
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
        scene = volume.GetScene()
        key = str(self.inputPath)  # mffmt predict names inputs by the absolute path it was given
        rows = [row for row in read_result_rows(outputDir) if row["input"] == key]
        failed = next((row["error"] for row in rows if row["error"]), None)
        files = read_output_files(outputDir).get(key)
        if failed or not rows or not files:
            raise RuntimeError(failed or f"mffmt predict wrote no result for {self.inputPath}")
        spacingKnown = nodes.spacingKnown(volume)
        for row in rows:
            row["input"] = volume.GetName()
            if not spacingKnown:  # written as NRRD, but the image itself has no physical spacing
                row.update(lesion_area_mm2=math.nan, long_axis_mm=math.nan, perpendicular_axis_mm=math.nan)
        segmentation = nodes.loadLesionSegmentation(files["segmentation"], volume)
        created.append(segmentation)
        segmentation.SetAttribute(nodes.SPACING_KNOWN_ATTRIBUTE, "1" if spacingKnown else "0")
        probability = nodes.loadHiddenVolume(files["probability"], f"{volume.GetName()} lesion probability", volume)
        created.append(probability)
        segmentation.SetNodeReferenceID(nodes.PROBABILITY_ROLE, probability.GetID())
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{volume.GetName()} MFFMT"))
        created.append(table)
        points = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(f"{volume.GetName()} finding"))
        created.append(points)
        points.CreateDefaultDisplayNodes()
        lines = []
        for name in ("long axis", "perpendicular axis"):
            line = scene.AddNewNodeByClass("vtkMRMLMarkupsLineNode", scene.GenerateUniqueName(f"{volume.GetName()} {name}"))
            created.append(line)
            line.CreateDefaultDisplayNodes()
            lines.append(line)
        roles = ((table, nodes.TABLE_ROLE), (points, nodes.POINTS_ROLE), *zip(lines, nodes.CALIPER_ROLES))
        for node, role in roles:
            segmentation.SetNodeReferenceID(role, node.GetID())
            nodes.placeLike(node, volume)
        if self.gradcam and "gradcam" in files:
            heatmap = nodes.loadHiddenVolume(files["gradcam"], f"{volume.GetName()} Grad-CAM", volume)
            created.append(heatmap)
            segmentation.SetNodeReferenceID(nodes.GRADCAM_ROLE, heatmap.GetID())
            nodes.showHeatmap(volume, heatmap)
        # The rows hold mffmt predict's measurements; only the key frame's caliper ends are measured here.
        frame = key_frame(rows)
        calipers = [] if frame is None else frame_measurements(
            nodes.volumeArray(probability)[frame:frame + 1], read_threshold(outputDir),
            nodes.ijkToRasArray(probability), spacingKnown, first_frame=frame)[0]["calipers"]
        showResults(segmentation, rows, self.threshold, calipers)
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
    """Segment and classify. ``self.workRoot`` (the folder for temporary working folders) and
    ``self.requireRequirements`` come from the logic."""

    workRoot: Path

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
                        roiNode=None, gradcam: bool = False, device: str = "cpu",
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
            device: "cpu"/"cuda" (or "CPU"/"GPU").
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
        self.requireRequirements()
        roi = self.roiBox(roiNode, volume) if roiNode is not None else None
        workDir = makeWorkFolder(self.workRoot)
        try:
            inputPath = nodes.writeVolumeNode(volume, workDir / "input.nrrd")
            args = predict_command(pythonExecutable(), [inputPath], workDir / "output", model=model,
                                   lesion_threshold=threshold, roi=roi, gradcam=gradcam, device=device)
            process = startCommand(args, workDir)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        return PredictionTask(volume, Path(args[-1]), threshold, gradcam, process=process, workDir=workDir,
                              progressCallback=progressCallback, completedCallback=completedCallback,
                              keepFiles=keepFiles)

    def process(self, inputNode, model: str | os.PathLike | None = None, threshold: float | None = None,
                roiNode=None, gradcam: bool = False, device: str = "cpu"
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
        return [normalise_row(row) for row in json.loads(text)]

    def updateThreshold(self, segmentationNode: vtkMRMLSegmentationNode, threshold: float) -> list[dict[str, Any]]:
        """Redraw a result at another lesion threshold without running the network; the new rows.

        The classification stays; lesion area, component count, centroid, table and points follow.
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
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

    def processFolder(self, inputDir: str | os.PathLike, outputDir: str | os.PathLike,
                      model: str | os.PathLike | None = None, threshold: float | None = None,
                      roi: Sequence[int] | None = None, gradcam: bool = False, device: str = "cpu",
                      overwrite: bool = False, progressCallback: Callable[[PredictProgress], None] | None = None
                      ) -> list[dict[str, Any]]:
        """Segment and classify every image file in a folder (recursively) into ``outputDir``.

        Writes what ``mffmt predict`` writes (per input ``<stem>.seg.nrrd``, probability, overlay,
        Grad-CAM; results.csv and results.json) and blocks until done. A rerun skips inputs an
        earlier run finished unless ``overwrite``.

        Returns:
            One row per frame of every input; an input that failed has a row with its error.

        Raises:
            ValueError: the folder does not exist; RuntimeError: the run failed as a whole.
        """
        inputDir = Path(inputDir)
        if not inputDir.is_dir():
            raise ValueError(f"{inputDir}: not a folder")
        self.requireRequirements()
        args = predict_command(pythonExecutable(), [inputDir], outputDir, model=model, lesion_threshold=threshold,
                               roi=roi, gradcam=gradcam, device=device, overwrite=overwrite)
        workDir = makeWorkFolder(self.workRoot)
        try:
            process = startCommand(args, workDir)
            progress = PredictProgress()
            while not process.is_finished():
                for line in process.read_lines():
                    event = parse_event_line(line)
                    if event is None:
                        logging.info(f"mffmt predict: {line}")
                    else:
                        progress.update(event)
                if progressCallback:
                    progressCallback(progress)
                time.sleep(0.2)
            if process.returncode not in (0, 1):  # 1: some inputs failed, their rows say why
                raise RuntimeError(processError("mffmt predict", process))
        finally:
            shutil.rmtree(workDir, ignore_errors=True)
        return read_result_rows(outputDir)

