"""The logic's retraining: scene volumes as training data, ``mffmt train``, the new model added. Slicer only."""

import datetime
import os
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import slicer
from slicer import vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode

from MFFMTCore.base.fine_tuning import FINE_TUNE_DEFAULTS
from MFFMTCore.base.labels import IMAGE_LABELS
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.base.site_report import read_site_report, summary_text
from MFFMTCore.base.terminology import SEGMENT_NAME
from MFFMTCore.errors import MFFMTError
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.commands import train_command, train_options
from MFFMTSlicerLib.models import safe_model_filename
from MFFMTSlicerLib.progress import JsonlTail, TrainingState
from MFFMTSlicerLib.scene_data import SceneVolume, TrainingExport, write_training_datalist
from MFFMTSlicerLib.slicer_prediction import isResultSegmentation
from MFFMTSlicerLib.tasks import (
    BackgroundTask,
    makeWorkFolder,
    processError,
    pythonExecutable,
    startCommand,
)

FINE_TUNE = "Fine-tune the selected model on my data"
FROM_SCRATCH = "Train a new model from scratch"
# Learning rates suggested for fine-tuning (the command's fine-tuning default) and for training from scratch.
SUGGESTED_LEARNING_RATE = {FINE_TUNE: FINE_TUNE_DEFAULTS["lr"], FROM_SCRATCH: 1e-3}
# Volume attribute holding the class label a user gave a scene volume for retraining.
LABEL_ATTRIBUTE = "MFFMT.label"
# Seconds a training run gets to reach a safe point after Cancel before it is terminated.
TRAIN_STOP_GRACE_S = 120.0


def learningRateAfterModeChange(previousMode: str, newMode: str, learningRate: float) -> float:
    """The learning rate to show after the user switches between fine-tuning and training from scratch:
    the new mode's suggestion, unless the user chose a rate of their own (then it is kept)."""
    if previousMode != newMode and learningRate == SUGGESTED_LEARNING_RATE.get(previousMode):
        return SUGGESTED_LEARNING_RATE[newMode]
    return learningRate


class TrainingTask(BackgroundTask):
    """One run of ``mffmt train``; ``state`` follows the run's progress file.

    ``status`` ends "done" (``modelPath`` is the new model in the models folder), "failed"
    (``error``) or "cancelled" (the run folder keeps the best model so far; no model is added).
    A fine-tuning run that is done also has its site report (the parent and the new model on the
    run's validation patients): ``siteReport`` (the JSON, or None), ``siteReportText`` (one paragraph,
    with a plain warning when the new model is not better) and ``siteReportPicture`` (ROC curves and
    reliability diagrams, a PNG), for the panel to show.
    """

    name = "mffmt train"

    def __init__(self, runDir: Path, modelName: str, addModel: Callable[[Path, str], Path], **kwargs):
        super().__init__(**kwargs)
        self.runDir = runDir
        self.folder = RunFolder(runDir)
        self.modelName = modelName
        self.addModel = addModel
        self.state = TrainingState()
        self.tail = JsonlTail(self.folder.progress)
        self.modelPath: Path | None = None
        self.cancelRequestedAt: float | None = None
        self.siteReport: dict[str, Any] | None = None
        self.siteReportText: str | None = None
        self.siteReportPicture: Path | None = None

    @property
    def stopFile(self) -> Path:
        return self.folder.stop

    def requestStop(self) -> None:
        """Ask the run to stop at its next safe point (it is terminated if it does not within
        :data:`TRAIN_STOP_GRACE_S`); its last checkpoint and best model stay in the run folder."""
        if self.finished or self.cancelRequestedAt is not None:
            return
        self.cancelRequestedAt = time.monotonic()
        self.stopFile.touch()

    def _poll(self) -> None:
        super()._poll()
        for event in self.tail.read_events():
            self.state.update(event)
        if (self.cancelRequestedAt is not None and not self.process.is_finished()
                and time.monotonic() - self.cancelRequestedAt > TRAIN_STOP_GRACE_S):
            self.process.terminate(grace_s=2.0)  # no safe point reached: stop it anyway

    def _finish(self) -> None:
        model = self.folder.model
        if self.state.status == "done" and self.process.returncode == 0 and model.is_file():
            self.modelPath = self.addModel(model, self.modelName)
            self.status = "done"
            self._readSiteReport()
        elif self.cancelRequestedAt is not None or self.state.status == "cancelled":
            self.status = "cancelled"
        else:
            self.status = "failed"
            self.error = self.state.message if self.state.status == "error" else processError("mffmt train", self.process)


    def _readSiteReport(self) -> None:
        """The run's site report, when it wrote one (a fine-tuning run); a damaged one is said, not shown."""
        if not self.folder.site_report.is_file():
            return
        try:
            self.siteReport = read_site_report(self.folder.site_report)
        except MFFMTError as error:
            self.siteReportText = f"The site report cannot be shown: {error}"
            return
        self.siteReportText = summary_text(self.siteReport)
        picture = self.folder.site_report_picture
        self.siteReportPicture = picture if picture.is_file() else None


class TrainingLogic:
    """Retrain. ``self.workRoot``, ``self.modelsFolder``, ``self.addModelFile`` and
    ``self.requireRequirements`` come from the logic."""

    @staticmethod
    def setTrainingLabel(volumeNode: vtkMRMLScalarVolumeNode, label: str | None) -> None:
        """Mark a scene volume benign, malignant or normal for retraining (None: no label)."""
        if label is not None and label not in IMAGE_LABELS:
            raise ValueError(f"label must be one of {', '.join(IMAGE_LABELS)} or None, got {label!r}")
        volumeNode.SetAttribute(LABEL_ATTRIBUTE, label or "")

    @staticmethod
    def trainingLabel(volumeNode: vtkMRMLScalarVolumeNode) -> str | None:
        return volumeNode.GetAttribute(LABEL_ATTRIBUTE) or None

    def sceneTrainingCandidates(self, scene=None) -> list[tuple[vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode | None,
                                                                str | None]]:
        """(volume, its segmentation or None, its label or None) for each image volume of a scene.

        A segmentation belongs to the volume it takes its geometry from; only segmentations a user
        made count (this module's results would teach the model its own answers), and volumes this
        module made (probabilities, heat maps, clips assembled from a sequence) are left out.

        Args:
            scene: the scene; None is Slicer's scene.
        """
        scene = scene if scene is not None else slicer.mrmlScene
        segmentations: dict[str, Any] = {}
        for segmentation in nodes.nodesByClass(scene, "vtkMRMLSegmentationNode"):
            reference = segmentation.GetNodeReference(segmentation.GetReferenceImageGeometryReferenceRole())
            if reference is not None and not isResultSegmentation(segmentation):
                segmentations.setdefault(reference.GetID(), segmentation)
        candidates = []
        for volume in nodes.nodesByClass(scene, "vtkMRMLScalarVolumeNode"):
            if volume.IsA("vtkMRMLLabelMapVolumeNode") or volume.GetAttribute(nodes.RESULT_VOLUME_ATTRIBUTE):
                continue
            if volume.GetAttribute(nodes.SOURCE_SEQUENCE_ATTRIBUTE):
                continue
            if volume.GetImageData() is None or volume.GetHideFromEditors():
                continue
            candidates.append((volume, segmentations.get(volume.GetID()), self.trainingLabel(volume)))
        return candidates

    @staticmethod
    def lesionMask(segmentationNode: vtkMRMLSegmentationNode, volumeNode: vtkMRMLScalarVolumeNode) -> np.ndarray | None:
        """The lesion mask (boolean, (k, j, i)) of a segmentation on the voxels of ``volumeNode``: its
        "Lesion" segment, or all its segments together when none is called so; None without segments."""
        segmentation = segmentationNode.GetSegmentation()
        lesion = segmentation.GetSegmentIdBySegmentName(SEGMENT_NAME)
        ids = [lesion] if lesion else [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        mask = None
        for segmentId in ids:
            array = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, volumeNode) != 0
            mask = array if mask is None else mask | array
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

    def startTraining(self, data: Sequence[str | os.PathLike] = (), modelName: str = "my_model",
                      sceneItems: Iterable[tuple[Any, Any, str | None]] = (), device: str = "auto",
                      progressCallback: Callable[[TrainingTask], None] | None = None,
                      completedCallback: Callable[[TrainingTask], None] | None = None,
                      **options: Any) -> TrainingTask:
        """Start training (or fine-tuning) a model with ``mffmt train``; it is added to the models folder.

        Args:
            data: BUSI or BUS-BRA folders and datalist files.
            modelName: name of the new model file in the models folder (made unique if taken).
            sceneItems: (volume, segmentation or None, "benign"/"malignant"/"normal"/None) from the scene.
            device: a ``--device`` value or a device of the panel (see :func:`MFFMTSlicerLib.commands.device_argument`).
            progressCallback: called with the task whenever new progress is read.
            completedCallback: called with the task when it has finished, failed or been cancelled.
            options: options of ``mffmt train`` in camelCase or by their own names
                (:data:`MFFMTSlicerLib.commands.TRAIN_KEYWORDS`), e.g. ``epochs=20, lr=1e-4,
                initModel=path, labelSmoothing=0.1``; None leaves a value to the command's preset. With
                ``initModel`` (fine-tuning) ``backbone`` is ignored: the model keeps its own.

        Returns:
            The running task (poll it or wait for it).

        Raises:
            ValueError: no or missing data, bad options (MFFMTError names the option); TypeError: an
            unknown option; RuntimeError: missing packages.
        """
        options = train_options(options)
        data = [Path(path).absolute() for path in data]
        missing = [str(path) for path in data if not path.exists()]
        if missing:
            raise ValueError(f"training data not found: {', '.join(missing)}")
        if options.get("init_model"):
            options["backbone"] = None
        sceneItems = list(sceneItems)
        self.requireRequirements()
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        runDir = self.modelsFolder.absolute() / "runs" / f"{stamp}-{safe_model_filename(modelName)}"
        runDir.mkdir(parents=True, exist_ok=False)
        workDir = None
        try:  # a start that fails (a bad option, a scene volume that cannot be exported) leaves nothing behind
            if sceneItems:
                data.append(self.exportSceneTrainingData(sceneItems, runDir / "scene_data").datalist)
            args = train_command(pythonExecutable(), data, runDir, device=device, progress="none",
                                 stop_file=RunFolder(runDir).stop, **options)
            workDir = makeWorkFolder(self.workRoot)
            process = startCommand(args, workDir)
        except BaseException:
            shutil.rmtree(runDir, ignore_errors=True)
            if workDir is not None:
                shutil.rmtree(workDir, ignore_errors=True)
            raise
        return TrainingTask(runDir, modelName, self.addModelFile, process=process, workDir=workDir,
                            progressCallback=progressCallback, completedCallback=completedCallback)

    def train(self, data: Sequence[str | os.PathLike] = (), modelName: str = "my_model", **options: Any) -> Path:
        """:meth:`startTraining` and wait; the path of the new model in the models folder.

        Raises:
            ValueError: no or missing data, bad options; RuntimeError: training failed or was stopped.
        """
        task = self.startTraining(data, modelName, **options).wait(intervalS=1.0)
        if task.status != "done":
            raise RuntimeError(task.error or f"training {task.status}; run folder: {task.runDir}")
        return task.modelPath

    @staticmethod
    def cancelTraining(task: TrainingTask) -> None:
        """Ask a running training to stop at its next safe point (see :meth:`TrainingTask.requestStop`)."""
        task.requestStop()
