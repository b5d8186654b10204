"""MFFMTSlicerLogic: segment, classify and retrain from Slicer, without any GUI. Slicer only.

The network never runs in Slicer's process: each task starts ``<PythonSlicer> -m MFFMTCore
predict|train`` (see :mod:`MFFMTSlicerLib.commands`), follows its progress and, at the end, reads
the results back into the scene. With ``waitForCompletion=True`` (the default, for scripts) a call
returns when the work is done; with False it returns a task at once and a Qt timer drives it, so
the GUI stays responsive and :meth:`MFFMTSlicerLogic.cancel` can stop it. The logic raises
exceptions and never opens a dialog.
"""

# No "from __future__ import annotations": parameterNodeWrapper reads the annotations as types.
import datetime
import importlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Union

import qt
import slicer
import vtk
from MRMLCorePython import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode, vtkMRMLSequenceNode
from slicer.parameterNodeWrapper import (
    Choice,
    Decimals,
    Default,
    SingleStep,
    WithinRange,
    parameterNodeWrapper,
)
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
from vtkSlicerMarkupsModuleMRMLPython import vtkMRMLMarkupsROINode

from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.commands import child_environment, locate_core_package, predict_command, train_command
from MFFMTSlicerLib.dependencies import RequirementStatus, check_requirements, missing_requirements
from MFFMTSlicerLib.geometry import roi_pixel_box
from MFFMTSlicerLib.models import ModelEntry, ModelRegistry, safe_model_filename
from MFFMTSlicerLib.process import BackgroundProcess
from MFFMTSlicerLib.progress import JsonlTail, PredictProgress, TrainingState, parse_event_line
from MFFMTSlicerLib.results import apply_measurements, frame_measurements, read_output_files, read_results
from MFFMTSlicerLib.scene_data import LABELS, SceneVolume, TrainingExport, write_training_datalist
from MFFMTSlicerLib.terminology import SEGMENT_NAME

FINE_TUNE = "Fine-tune the selected model"
FROM_SCRATCH = "Train a new model from scratch"
# Volume attribute holding the class label a user gave a scene volume for retraining.
LABEL_ATTRIBUTE = "MFFMT.label"
# Attributes of a result segmentation: its result rows (JSON) and the threshold they reflect.
RESULTS_ATTRIBUTE = "MFFMT.resultRows"
THRESHOLD_ATTRIBUTE = "MFFMT.threshold"
# Seconds a training run gets to reach a safe point after Cancel before it is terminated.
TRAIN_STOP_GRACE_S = 120.0


@parameterNodeWrapper
class MFFMTSlicerParameterNode:
    """The module's settings, saved with the scene.

    inputNode: image or clip volume, or a sequence of frames, to segment and classify.
    roiNode: optional box: only the pixels inside are classified (the paper's ROI mode).
    threshold: lesion probability threshold of the segmentation.
    gradcam: also compute a Grad-CAM heat map of the malignant class.
    device: CPU or GPU for inference and training.
    modelPath: the selected model file.
    result: the lesion segmentation of the last run (the threshold slider redraws it).
    The others are the retraining options.
    """

    inputNode: Union[vtkMRMLScalarVolumeNode, vtkMRMLSequenceNode, None]
    roiNode: vtkMRMLMarkupsROINode
    threshold: Annotated[float, WithinRange(0.01, 0.99), Decimals(2), SingleStep(0.01), Default(0.5)]
    gradcam: bool
    device: Annotated[str, Choice(["CPU", "GPU"]), Default("CPU")]
    modelPath: str
    result: vtkMRMLSegmentationNode
    useSceneData: bool
    backbone: Annotated[str, Choice(["resnet18", "resnet50"]), Default("resnet18")]
    startFrom: Annotated[str, Choice([FINE_TUNE, FROM_SCRATCH]), Default(FINE_TUNE)]
    epochs: Annotated[int, WithinRange(1, 1000), Default(20)]
    learningRate: Annotated[float, WithinRange(1e-6, 0.1), Decimals(6), SingleStep(1e-5), Default(1e-4)]
    lambdaLoc: Annotated[float, WithinRange(0.0, 10.0), Decimals(2), SingleStep(0.1), Default(1.0)]
    batchSize: Annotated[int, WithinRange(1, 256), Default(8)]
    valFraction: Annotated[float, WithinRange(0.05, 0.5), Decimals(2), SingleStep(0.05), Default(0.2)]
    modelName: Annotated[str, Default("my_model")]


@dataclass
class PredictionTask:
    """One run of ``mffmt predict`` on one volume; its fields fill in as the run goes on.

    ``status`` is "running", "done", "failed" or "cancelled"; when "done", ``segmentationNode`` and
    ``results`` (one row per frame) hold the outcome, otherwise ``error`` says what went wrong.
    """

    inputVolume: Any
    workDir: Path
    inputPath: Path
    process: BackgroundProcess
    threshold: float | None
    gradcam: bool
    progressCallback: Callable[["PredictionTask"], None] | None = None
    completedCallback: Callable[["PredictionTask"], None] | None = None
    keepFiles: bool = False
    progress: PredictProgress = field(default_factory=PredictProgress)
    status: str = "running"
    error: str | None = None
    segmentationNode: Any = None
    results: list[dict[str, Any]] = field(default_factory=list)
    timer: Any = None

    @property
    def finished(self) -> bool:
        return self.status != "running"


@dataclass
class TrainingTask:
    """One run of ``mffmt train``; ``state`` follows RUN_DIR/progress.jsonl.

    ``status`` is "running", "done" (``modelPath`` is the new model in the models folder),
    "failed" (``error``) or "cancelled" (the run folder keeps the best model so far).
    """

    runDir: Path
    modelName: str
    process: BackgroundProcess
    progressCallback: Callable[["TrainingTask"], None] | None = None
    completedCallback: Callable[["TrainingTask"], None] | None = None
    state: TrainingState = field(default_factory=TrainingState)
    status: str = "running"
    error: str | None = None
    modelPath: Path | None = None
    cancelRequestedAt: float | None = None
    timer: Any = None
    tail: JsonlTail = field(init=False)

    def __post_init__(self) -> None:
        self.tail = JsonlTail(self.runDir / "progress.jsonl")

    @property
    def stopFile(self) -> Path:
        return self.runDir / "STOP"

    @property
    def finished(self) -> bool:
        return self.status != "running"


def coreFolder() -> Path | None:
    """The folder that holds the MFFMTCore package: next to the module when installed, else one up."""
    moduleDir = Path(__file__).resolve().parent.parent
    return locate_core_package([moduleDir, moduleDir.parent])


def _processError(name: str, process: BackgroundProcess) -> str:
    """A message for a failed command: its exit status and last output lines."""
    lines = [line for line in process.tail(12) if line.strip()]
    return f"{name} failed (exit status {process.returncode}):\n" + "\n".join(lines)


class MFFMTSlicerLogic(ScriptedLoadableModuleLogic):
    """Segment and classify breast lesions in ultrasound volumes, and retrain the model.

    Args:
        modelsFolder: where trained and added models are kept; default: the folder set in the
            application settings (``MFFMTSlicer/modelsFolder``), else ``~/.MFFMTSlicer/models``.
    """

    def __init__(self, modelsFolder: str | os.PathLike | None = None):
        ScriptedLoadableModuleLogic.__init__(self)
        self._modelsFolder = Path(modelsFolder) if modelsFolder is not None else None

    def getParameterNode(self) -> MFFMTSlicerParameterNode:
        return MFFMTSlicerParameterNode(super().getParameterNode())

    # ------------------------------------------------------------------------------ set-up

    @staticmethod
    def missingRequirements() -> list[RequirementStatus]:
        """The Python packages MFFMTCore needs that Slicer's Python lacks (or has too old)."""
        return missing_requirements(check_requirements())

    def requireRequirements(self) -> None:
        """Raise RuntimeError naming the missing packages, if any."""
        missing = self.missingRequirements()
        if missing:
            raise RuntimeError("MFFMT needs Python packages that are not installed: "
                               + ", ".join(status.describe() for status in missing)
                               + ". Install them from the module panel or with logic.installRequirements().")

    def installRequirements(self, statuses: Sequence[RequirementStatus] | None = None) -> None:
        """Install missing packages: torch with the PyTorch extension, the rest with pip.

        Ask the user before calling this: it downloads several hundred megabytes.

        Raises:
            RuntimeError: a package Slicer ships itself is missing, or an installation failed.
        """
        statuses = self.missingRequirements() if statuses is None else list(statuses)
        bundled = [status.describe() for status in statuses if status.requirement.installer == "bundled"]
        if bundled:
            raise RuntimeError(f"Slicer's own Python lacks {', '.join(bundled)}; install a current Slicer (5.10 or newer)")
        for status in statuses:
            if status.requirement.installer != "pytorch":
                continue
            try:
                import PyTorchUtils
            except ModuleNotFoundError:
                logging.warning("PyTorch extension not found: installing torch with pip (CPU or default CUDA build)")
                slicer.util.pip_install([str(status.requirement)])
                continue
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=status.requirement.specifier)
            if torch is None:
                raise RuntimeError("PyTorch could not be installed (see the Python console)")
        others = [str(status.requirement) for status in statuses if status.requirement.installer == "pip"]
        if others:
            slicer.util.pip_install(others)
        importlib.invalidate_caches()  # let this process find what was just installed
        still = self.missingRequirements()
        if still:
            raise RuntimeError("still missing after installation: " + ", ".join(s.describe() for s in still))

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's Python launcher, which starts Python with Slicer's environment."""
        return shutil.which("PythonSlicer") or sys.executable

    def _startProcess(self, args: list[str]) -> BackgroundProcess:
        core = coreFolder()
        logging.info("Starting: " + " ".join(args))
        process = BackgroundProcess(args, env=child_environment(os.environ, core), cwd=str(core) if core else None)
        process.start()
        return process

    # ------------------------------------------------------------------------------ models

    @property
    def modelsFolder(self) -> Path:
        if self._modelsFolder is not None:
            return self._modelsFolder
        folder = qt.QSettings().value("MFFMTSlicer/modelsFolder")
        return Path(folder) if folder else Path.home() / ".MFFMTSlicer" / "models"

    @staticmethod
    def defaultModelPath() -> Path | None:
        """The model that ships with the extension, or None."""
        try:
            from MFFMTCore.model_file import default_model_path
        except ImportError:  # torch not installed yet: look for the file itself
            core = coreFolder()
            shipped = sorted((core / "MFFMTCore" / "models").glob("*.safetensors")) if core else []
            return shipped[0] if shipped else None
        return default_model_path()

    def modelRegistry(self) -> ModelRegistry:
        return ModelRegistry(self.modelsFolder, self.defaultModelPath())

    def models(self) -> list[ModelEntry]:
        """The models to choose from: the default model first, then the models folder."""
        return self.modelRegistry().entries()

    def addModelFile(self, path: str | os.PathLike, name: str | None = None) -> Path:
        """Copy a model file into the models folder (never replacing one); the new path."""
        return self.modelRegistry().add(path, name)

    # --------------------------------------------------------------------- segment & classify

    @staticmethod
    def inputVolume(inputNode):
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
    def roiBox(roiNode, volumeNode) -> tuple[int, int, int, int]:
        """The pixel box (x, y, w, h) of each frame of ``volumeNode`` that a markups ROI covers.

        Raises:
            ValueError: the volume is transformed (harden the transform first) or the ROI misses it.
        """
        if volumeNode.GetParentTransformNode() is not None:
            raise ValueError(f"{volumeNode.GetName()}: harden its transform before using an ROI")
        bounds = [0.0] * 6
        roiNode.GetRASBounds(bounds)
        rasToIjk = vtk.vtkMatrix4x4()
        volumeNode.GetRASToIJKMatrix(rasToIjk)
        width, height, _ = volumeNode.GetImageData().GetDimensions()
        return roi_pixel_box(bounds, slicer.util.arrayFromVTKMatrix(rasToIjk), width, height)

    def process(self, inputNode, model: str | os.PathLike | None = None, threshold: float | None = None,
                roiNode=None, gradcam: bool = False, device: str = "cpu", waitForCompletion: bool = True,
                progressCallback: Callable[[PredictionTask], None] | None = None,
                completedCallback: Callable[[PredictionTask], None] | None = None, keepFiles: bool = False):
        """Segment the lesion and classify it benign/malignant in each frame of a volume or sequence.

        Args:
            inputNode: scalar volume (one frame or a clip of frames) or sequence node of 2D frames.
            model: model file; None uses the default model.
            threshold: lesion probability threshold; None uses the model's.
            roiNode: optional markups ROI; only pixels inside are classified (the paper's protocol).
            gradcam: also show a Grad-CAM heat map of the malignant class over the input.
            device: "cpu"/"cuda" (or "CPU"/"GPU").
            waitForCompletion: True blocks until done (scripts); False returns a running task.
            progressCallback: called with the task whenever progress is read.
            completedCallback: called with the task when it has finished, failed or been cancelled.
            keepFiles: keep the temporary folder (input and ``mffmt predict`` output) for inspection.

        Returns:
            With ``waitForCompletion``: (segmentation node, result rows), one row per frame with
            p_benign, p_malignant, prediction, lesion area and centroid (LPS). Otherwise the
            :class:`PredictionTask`.

        Raises:
            ValueError: bad input; RuntimeError: missing packages or ``mffmt predict`` failed.
        """
        volume = self.inputVolume(inputNode)
        self.requireRequirements()
        roi = self.roiBox(roiNode, volume) if roiNode is not None else None
        workDir = Path(slicer.util.tempDirectory("MFFMTSlicer"))
        try:
            inputPath = nodes.writeVolumeNode(volume, workDir / "input.nrrd")
            args = predict_command(self.pythonExecutable(), [inputPath], workDir / "output", model=model,
                                   threshold=threshold, roi=roi, gradcam=gradcam, device=device)
            process = self._startProcess(args)
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        task = PredictionTask(volume, workDir, inputPath, process, threshold, gradcam, progressCallback,
                              completedCallback, keepFiles)
        if not self._drive(task, self._pollPrediction, 0.25, waitForCompletion):
            return task
        if task.status != "done":
            raise RuntimeError(task.error or f"prediction {task.status}")
        return task.segmentationNode, task.results

    @staticmethod
    def _drive(task: Any, poll: Callable[[Any], None], intervalS: float, waitForCompletion: bool) -> bool:
        """Poll a task until it finishes (blocking; True) or from a Qt timer in the GUI's event loop (False)."""
        if not waitForCompletion:
            task.timer = qt.QTimer()
            task.timer.setInterval(int(intervalS * 1000))
            task.timer.timeout.connect(lambda: poll(task))
            task.timer.start()
            return False
        while not task.finished:
            poll(task)
            time.sleep(intervalS)
        return True

    def _pollPrediction(self, task: PredictionTask) -> None:
        if task.finished:
            return
        for line in task.process.read_lines():
            event = parse_event_line(line)
            if event is None:
                logging.info(f"mffmt predict: {line}")
                continue
            task.progress.update(event)
            if event.get("error"):
                task.error = str(event["error"])
        if task.progressCallback:
            task.progressCallback(task)
        if task.process.is_finished():
            self._finishPrediction(task)

    def _finishPrediction(self, task: PredictionTask) -> None:
        if task.timer is not None:
            task.timer.stop()
        try:
            if task.status == "cancelled":
                return
            if task.process.returncode != 0:
                raise RuntimeError(task.error or _processError("mffmt predict", task.process))
            self._importPrediction(task)
            task.status = "done"
        except Exception as error:  # reported through the task: the GUI shows it, scripts re-raise it
            task.status, task.error = "failed", str(error)
            logging.error(f"Segmentation of {task.inputVolume.GetName()} failed: {error}")
        finally:
            if not task.keepFiles:
                shutil.rmtree(task.workDir, ignore_errors=True)
            if task.completedCallback:
                task.completedCallback(task)

    def _importPrediction(self, task: PredictionTask) -> None:
        """Load the outputs of a finished run as nodes next to the input volume."""
        outputDir = task.workDir / "output"
        volume = task.inputVolume
        key = str(task.inputPath.absolute())  # mffmt predict names inputs by absolute path
        rows = [row for row in read_results(outputDir) if row["input"] == key]
        failed = next((row["error"] for row in rows if row["error"]), None)
        files = read_output_files(outputDir).get(key)
        if failed or not rows or not files:
            raise RuntimeError(failed or f"mffmt predict wrote no result for {task.inputPath}")
        for row in rows:
            row["input"] = volume.GetName()
        segmentation = nodes.loadLesionSegmentation(files["segmentation"], volume)
        probability = nodes.loadHiddenVolume(files["probability"], f"{volume.GetName()} lesion probability", volume)
        segmentation.SetNodeReferenceID(nodes.PROBABILITY_ROLE, probability.GetID())
        table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode",
                                                   slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} MFFMT"))
        points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode",
                                                    slicer.mrmlScene.GenerateUniqueName(f"{volume.GetName()} finding"))
        points.CreateDefaultDisplayNodes()
        for node, role in ((table, nodes.TABLE_ROLE), (points, nodes.POINTS_ROLE)):
            segmentation.SetNodeReferenceID(role, node.GetID())
            nodes.placeLike(node, volume)
        if task.gradcam and "gradcam" in files:
            heatmap = nodes.loadHiddenVolume(files["gradcam"], f"{volume.GetName()} Grad-CAM", volume)
            segmentation.SetNodeReferenceID(nodes.GRADCAM_ROLE, heatmap.GetID())
            nodes.showHeatmap(volume, heatmap)
        self._showResults(segmentation, rows, task.threshold)
        task.segmentationNode, task.results = segmentation, rows

    def _showResults(self, segmentationNode, rows: list[dict[str, Any]], threshold: float | None) -> None:
        """Write ``rows`` into the run's table and points and remember them on the segmentation."""
        nodes.fillResultsTable(segmentationNode.GetNodeReference(nodes.TABLE_ROLE), rows)
        nodes.fillLesionPoints(segmentationNode.GetNodeReference(nodes.POINTS_ROLE), rows)
        segmentationNode.SetAttribute(RESULTS_ATTRIBUTE, json.dumps(rows, allow_nan=True))
        if threshold is not None:
            segmentationNode.SetAttribute(THRESHOLD_ATTRIBUTE, repr(float(threshold)))

    @staticmethod
    def results(segmentationNode) -> list[dict[str, Any]]:
        """The result rows of a segmentation made by :meth:`process` (as the threshold left them)."""
        text = segmentationNode.GetAttribute(RESULTS_ATTRIBUTE) if segmentationNode else None
        if not text:
            raise ValueError(f"{segmentationNode.GetName() if segmentationNode else 'None'}: not an MFFMT result")
        return json.loads(text)

    def updateThreshold(self, segmentationNode, threshold: float) -> list[dict[str, Any]]:
        """Redraw a result at another lesion threshold without running the network; the new rows.

        The classification stays; lesion area, component count, centroid, table and points follow.
        """
        if not 0.0 < threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {threshold}")
        rows = self.results(segmentationNode)
        probability = nodes.rethreshold(segmentationNode, threshold)
        probabilityNode = segmentationNode.GetNodeReference(nodes.PROBABILITY_ROLE)
        rows = apply_measurements(rows, frame_measurements(probability, threshold, nodes.ijkToRasArray(probabilityNode)))
        self._showResults(segmentationNode, rows, threshold)
        return rows

    def cancel(self, task: PredictionTask) -> None:
        """Stop a running prediction; the task completes with status "cancelled"."""
        if task.finished:
            return
        task.status = "cancelled"
        task.process.terminate(grace_s=2.0)
        self._finishPrediction(task)

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
        args = predict_command(self.pythonExecutable(), [inputDir], outputDir, model=model, threshold=threshold,
                               roi=roi, gradcam=gradcam, device=device, overwrite=overwrite)
        process = self._startProcess(args)
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
            raise RuntimeError(_processError("mffmt predict", process))
        return read_results(outputDir)

    # ------------------------------------------------------------------------------ retrain

    @staticmethod
    def setTrainingLabel(volumeNode, label: str | None) -> None:
        """Mark a scene volume benign, malignant or normal for retraining (None: no label)."""
        if label is not None and label not in LABELS:
            raise ValueError(f"label must be one of {', '.join(LABELS)} or None, got {label!r}")
        volumeNode.SetAttribute(LABEL_ATTRIBUTE, label or "")

    @staticmethod
    def trainingLabel(volumeNode) -> str | None:
        return volumeNode.GetAttribute(LABEL_ATTRIBUTE) or None

    def sceneTrainingCandidates(self) -> list[tuple[Any, Any, str | None]]:
        """(volume, its segmentation or None, its label or None) for each image volume in the scene.

        A segmentation belongs to the volume it takes its geometry from; result volumes of this
        module (probabilities, heat maps) are left out.
        """
        segmentations: dict[str, Any] = {}
        for segmentation in slicer.util.getNodesByClass("vtkMRMLSegmentationNode"):
            reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            if reference is not None:
                segmentations.setdefault(reference.GetID(), segmentation)
        candidates = []
        for volume in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if volume.IsA("vtkMRMLLabelMapVolumeNode") or volume.GetAttribute(nodes.RESULT_VOLUME_ATTRIBUTE):
                continue
            if volume.GetImageData() is None or volume.GetHideFromEditors():
                continue
            candidates.append((volume, segmentations.get(volume.GetID()), self.trainingLabel(volume)))
        return candidates

    @staticmethod
    def lesionMask(segmentationNode, volumeNode):
        """The lesion mask of a segmentation on the voxels of ``volumeNode``: its "Lesion" segment,
        or all its segments together when none is called so."""
        segmentation = segmentationNode.GetSegmentation()
        lesion = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        ids = [lesion] if lesion else [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        mask = None
        for segmentId in ids:
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode)
            if array is None:  # an empty segment
                continue
            mask = array != 0 if mask is None else mask | (array != 0)
        return mask

    def exportSceneTrainingData(self, items: Iterable[tuple[Any, Any, str | None]],
                                outputDir: str | os.PathLike) -> TrainingExport:
        """Write (volume, segmentation or None, label or None) items as files and a datalist for training."""
        volumes = []
        for volume, segmentation, label in items:
            mask = self.lesionMask(segmentation, volume) if segmentation is not None else None
            volumes.append(SceneVolume(volume.GetName(), nodes.volumeArray(volume), nodes.ijkToRasArray(volume),
                                       label, mask))
        return write_training_datalist(volumes, outputDir)

    def train(self, data: Sequence[str | os.PathLike] = (), modelName: str = "my_model",
              sceneItems: Iterable[tuple[Any, Any, str | None]] = (), backbone: str | None = None,
              epochs: int | None = None, learningRate: float | None = None, lambdaLoc: float | None = None,
              batchSize: int | None = None, valFraction: float | None = None, initModel: str | os.PathLike | None = None,
              device: str = "cpu", inputSize: int | None = None, waitForCompletion: bool = True,
              progressCallback: Callable[[TrainingTask], None] | None = None,
              completedCallback: Callable[[TrainingTask], None] | None = None):
        """Train (or fine-tune) a model with ``mffmt train`` and add it to the models folder.

        Args:
            data: BUSI or BUS-BRA folders and datalist files.
            modelName: name of the new model file in the models folder (made unique if taken).
            sceneItems: (volume, segmentation or None, "benign"/"malignant"/"normal"/None) from the scene.
            backbone: "resnet18" or "resnet50" for a new model (ignored when fine-tuning).
            epochs, learningRate, lambdaLoc, batchSize, valFraction, inputSize: the recipe; None
                leaves the value to ``mffmt train``'s preset.
            initModel: model file to fine-tune; None trains from scratch.
            device: "cpu"/"cuda" (or "CPU"/"GPU").
            waitForCompletion: True blocks until done (scripts); False returns a running task.
            progressCallback: called with the task whenever new progress is read.
            completedCallback: called with the task when it has finished, failed or been cancelled.

        Returns:
            With ``waitForCompletion``: the path of the new model. Otherwise the :class:`TrainingTask`.

        Raises:
            ValueError: no or missing data, bad options; RuntimeError: training failed.
        """
        data = [Path(path) for path in data]
        missing = [str(path) for path in data if not path.exists()]
        if missing:
            raise ValueError(f"training data not found: {', '.join(missing)}")
        sceneItems = list(sceneItems)
        self.requireRequirements()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        runDir = self.modelsFolder / "runs" / f"{stamp}-{safe_model_filename(modelName)}"
        runDir.mkdir(parents=True, exist_ok=False)
        if sceneItems:
            data.append(self.exportSceneTrainingData(sceneItems, runDir / "scene_data").datalist)
        args = train_command(self.pythonExecutable(), data, runDir, backbone=None if initModel else backbone,
                             epochs=epochs, learning_rate=learningRate, lambda_loc=lambdaLoc, batch_size=batchSize,
                             val_fraction=valFraction, input_size=inputSize, init_model=initModel, device=device,
                             stop_file=runDir / "STOP", progress_bar=False)
        task = TrainingTask(runDir, modelName, self._startProcess(args), progressCallback, completedCallback)
        if not self._drive(task, self._pollTraining, 1.0, waitForCompletion):
            return task
        if task.status != "done":
            raise RuntimeError(task.error or f"training {task.status}; run folder: {runDir}")
        return task.modelPath

    def _pollTraining(self, task: TrainingTask) -> None:
        if task.finished:
            return
        for line in task.process.read_lines():
            logging.info(f"mffmt train: {line}")
        for event in task.tail.read_events():
            task.state.update(event)
        if task.progressCallback:
            task.progressCallback(task)
        if (task.cancelRequestedAt is not None and not task.process.is_finished()
                and time.monotonic() - task.cancelRequestedAt > TRAIN_STOP_GRACE_S):
            task.process.terminate(grace_s=2.0)  # no safe point reached: stop it anyway
        if task.process.is_finished():
            for event in task.tail.read_events():
                task.state.update(event)
            self._finishTraining(task)

    def _finishTraining(self, task: TrainingTask) -> None:
        if task.timer is not None:
            task.timer.stop()
        model = task.runDir / "model.safetensors"
        try:
            if task.state.status == "done" and task.process.returncode == 0 and model.is_file():
                task.modelPath = self.addModelFile(model, task.modelName)
                task.status = "done"
            elif task.cancelRequestedAt is not None or task.state.status == "cancelled":
                task.status = "cancelled"
            else:
                task.status = "failed"
                task.error = task.state.message if task.state.status == "error" else _processError(
                    "mffmt train", task.process)
        except Exception as error:  # the model could not be added: report through the task
            task.status, task.error = "failed", str(error)
        finally:
            if task.completedCallback:
                task.completedCallback(task)

    def cancelTraining(self, task: TrainingTask) -> None:
        """Ask a running training to stop at its next safe point (it is terminated if it does not).

        The run's last checkpoint and best model stay in its run folder; no model is added.
        """
        if task.finished or task.cancelRequestedAt is not None:
            return
        task.cancelRequestedAt = time.monotonic()
        task.stopFile.touch()
