"""MFFMTSlicerPresenter: the panel's decisions, without Qt. Slicer only (MRML), tested on slicer-core.

The panel (:mod:`MFFMTSlicerLib.slicer_widget`) binds Qt signals to the presenter's methods and shows
what :meth:`MFFMTSlicerPresenter.state` says; everything the panel decides is here: which buttons
can act and what they read, what Apply, Live and Train send to the logic, which messages show, and
how progress and results update the parameter node. What only Qt can do (dialogs, slice views,
the plot widget, timers) goes through a small view object (:class:`PanelView`).

The warm worker is started when the module is entered (:meth:`MFFMTSlicerPresenter.enter`), on a
helper thread, so that the first Apply finds it ready.
"""

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import slicer

from MFFMTCore.base.site_report import summary_text
from MFFMTCore.base.thresholds import SLIDER_RANGE
from MFFMTCore.errors import one_line
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.results import lesion_label
from MFFMTSlicerLib.slicer_logic import FINE_TUNE, MFFMTSlicerLogic, trainingOptions
from MFFMTSlicerLib.slicer_training import learningRateAfterModeChange

#: The label chooser's entry for a scene volume without a class label.
NO_LABEL = "(no label)"
#: Result rows shown below Apply (the table has them all).
SHOWN_ROWS = 8


@dataclass
class Button:
    """What a push button shows: its text, whether it can be pressed, its tooltip."""

    text: str
    enabled: bool
    toolTip: str = ""


@dataclass
class ModelChoice:
    """One item of the model selector."""

    title: str
    path: str
    description: str
    usable: bool


@dataclass
class TrainingReport:
    """What the Retrain tab shows when a training ends: a summary and, when there is one, a warning."""

    text: str
    warning: str = ""


@dataclass
class PanelState:
    """Everything the panel shows that the presenter decides; the widget copies it into its widgets.

    ``progress``/``trainProgress`` are percentages, None when the bar is hidden; ``polling`` says
    whether running work needs :meth:`MFFMTSlicerPresenter.pollTasks` from a timer, ``livePolling``
    whether live mode needs :meth:`MFFMTSlicerPresenter.pollLive`.
    """

    apply: Button
    live: Button
    train: Button
    liveRecordEnabled: bool
    backboneEnabled: bool
    models: list[ModelChoice] = field(default_factory=list)
    modelIndex: int = -1
    modelInfo: str = ""
    status: str = ""
    progress: int | None = None
    liveClass: str = "-"
    liveCounts: str = "-"
    trainStatus: str = ""
    trainWarning: str = ""
    trainProgress: int | None = None
    polling: bool = False
    livePolling: bool = False


class PanelView(Protocol):
    """What the presenter asks of the panel: Qt's dialogs and views."""

    def render(self, state: PanelState) -> None:
        """Show ``state`` in the widgets (and start or stop the polling timers)."""

    def confirm(self, text: str, title: str) -> bool:
        """Ask a yes/no question; True for yes."""

    def showError(self, text: str) -> None:
        """Show an error message."""

    def showVolume(self, volumeNode, fit: bool) -> None:
        """Show a volume in the slice views' background."""

    def showPlot(self, plotViewNode) -> None:
        """Show a plot view node in the panel's plot widget (None: none)."""


class MFFMTSlicerPresenter:
    """The MFFMT panel's decisions.

    Args:
        logic: the module's logic.
        view: the panel (:class:`PanelView`).
    """

    def __init__(self, logic: MFFMTSlicerLogic, view: PanelView):
        self.logic = logic
        self.view = view
        self.parameters = None  # MFFMTSlicerParameterNode, None while the scene closes
        self.predictionTask = None
        self.trainingTask = None
        self.models: list[ModelChoice] = []
        self.status = ""
        self.progress: int | None = None
        self.trainStatus = ""
        self.trainWarning = ""
        self.trainProgress: int | None = None
        self.liveClass, self.liveCounts = "-", "-"
        self.warmUp = None  # the future of the worker's start at enter()
        self._curves = None  # (table node, chart node) of the training curves
        self._startFrom = None  # the retraining mode the learning rate was last suggested for

    # ----------------------------------------------------------------------------- state

    def state(self) -> PanelState:
        """What the panel shows now."""
        parameters = self.parameters
        model = self.currentModel()
        choice = next((choice for choice in self.models if choice.path == model), None)
        if self.predictionTask is not None:
            apply = Button("Cancel", True, "Stop the running segmentation")
        elif parameters is None or parameters.inputNode is None or choice is None:
            apply = Button("Apply", False, "Choose an input and a model (add a model file or train one)")
        elif not choice.usable:
            apply = Button("Apply", False, f"The selected model cannot be used: {choice.description}")
        else:
            apply = Button("Apply", True, "Segment the lesion and classify it")
        if self.logic.live is not None:
            live = Button("Stop live", True)
        else:
            live = Button("Start live", apply.enabled and self.predictionTask is None)
        if self.trainingTask is not None:
            train = Button("Cancel training", self.trainingTask.cancelRequestedAt is None)
        else:
            train = Button("Train", parameters is not None)
        return PanelState(
            apply=apply, live=live, train=train, liveRecordEnabled=self.logic.live is None,
            # A fine-tuned model keeps the backbone of the model it starts from.
            backboneEnabled=parameters is not None and parameters.startFrom != FINE_TUNE,
            models=list(self.models), modelIndex=self.models.index(choice) if choice else -1,
            modelInfo=(choice.description if choice else
                       "No model yet: add a model file or train one in the Retrain tab."),
            status=self.status, progress=self.progress, liveClass=self.liveClass, liveCounts=self.liveCounts,
            trainStatus=self.trainStatus, trainWarning=self.trainWarning, trainProgress=self.trainProgress,
            polling=self.predictionTask is not None or self.trainingTask is not None,
            livePolling=self.logic.live is not None)

    def changed(self) -> None:
        """Show the current state."""
        self.view.render(self.state())

    def _errors(self, what: str) -> "_ShowErrors":
        """``with self._errors("Training could not start."):`` shows an exception as an error message."""
        return _ShowErrors(self, what)

    # ------------------------------------------------------------------- module and scene

    def enter(self) -> None:
        """The module was opened: take the scene's parameter node and start the worker."""
        self.initializeParameterNode()
        self.startWorker()

    def startWorker(self) -> None:
        """Start the warm worker with the selected model on a helper thread (when the packages it needs
        are installed), so the next Apply does not wait for it; a failure is reported by that Apply."""
        if self.parameters is None or self.logic.live is not None or self.logic.missingRequirements():
            return
        self.warmUp = self.logic.worker.clientLater(self.currentModel() or None, self.parameters.device)
        self.warmUp.add_done_callback(_logStartFailure)

    def initializeParameterNode(self) -> None:
        """Use the scene's parameter node; an empty input becomes the scene's first image volume. The
        model list is read again (headers only): models may have been added meanwhile, and a new
        scene's parameter node has no model yet."""
        self.setParameterNode(self.logic.getParameterNode())
        if not self.parameters.inputNode:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self.parameters.inputNode = firstVolume
        self.refreshModels()

    def setParameterNode(self, parameters) -> None:
        self.parameters = parameters
        self._startFrom = parameters.startFrom if parameters is not None else None
        self.changed()

    def parametersChanged(self) -> None:
        """A setting changed. Suggests a learning rate when the retraining mode changed: from the
        parameter node, not from the combo box, which the parameter node wrapper refills whenever the
        panel is entered (a slot on it would overwrite the user's rate each time)."""
        parameters = self.parameters
        if parameters is not None and parameters.startFrom != self._startFrom:
            if self._startFrom is not None:
                parameters.lr = learningRateAfterModeChange(self._startFrom, parameters.startFrom, parameters.lr)
            self._startFrom = parameters.startFrom
        self.changed()

    def sceneStartClose(self) -> None:
        """The scene closes: live mode and a running segmentation end (their nodes go); training goes on."""
        self.stopLive()
        if self.predictionTask is not None:
            self.logic.cancel(self.predictionTask)
        self._curves = None  # the next training makes new curves
        self.view.showPlot(None)
        self.setParameterNode(None)

    def sceneEndClose(self, entered: bool) -> None:
        if entered:
            self.initializeParameterNode()

    def cleanup(self) -> None:
        """The application closes or the module is reloaded: stop all work and the worker."""
        if self.predictionTask is not None:
            self.logic.cancel(self.predictionTask)
        if self.trainingTask is not None:
            self.logic.cancelTraining(self.trainingTask)
            self.trainingTask.process.terminate(grace_s=5.0)
        self.stopLive()
        self.logic.closeWorker()

    def ensureRequirements(self) -> bool:
        """Offer to install missing Python packages; True when everything needed is there."""
        missing = self.logic.missingRequirements()
        if not missing:
            return True
        text = ("MFFMT needs these Python packages, which Slicer's Python does not have yet:\n\n"
                + "\n".join(f"  - {status.describe()}" for status in missing)
                + "\n\nInstall them now? PyTorch alone downloads several hundred megabytes and the installation"
                " can take several minutes. Slicer may need a restart afterwards.")
        if not self.view.confirm(text, "MFFMT: install Python packages"):
            return False
        with self._errors("Installing the Python packages failed."):
            self.logic.installRequirements(missing)
            return True
        return False

    # --------------------------------------------------------------------------------- models

    def currentModel(self) -> str:
        """The selected model file ("" when none)."""
        return self.parameters.modelPath if self.parameters is not None else ""

    def refreshModels(self, select: str | None = None) -> None:
        """List the models (the default model first, then the models folder; one the worker could not
        load shows "(unusable)" with why) and keep the selection, else select ``select`` or the first."""
        self.models = [ModelChoice(entry.title(), str(entry.path), entry.description(), entry.error is None)
                       for entry in self.logic.models()]
        wanted = str(select) if select else self.currentModel()
        paths = [choice.path for choice in self.models]
        if wanted not in paths:
            wanted = next((choice.path for choice in self.models if choice.usable), "")
        self.selectModel(wanted)

    def selectModel(self, path: str) -> None:
        """The user chose a model: it becomes the parameter node's and the worker loads it in the
        background; the threshold starts at the model's own, unless that would redraw a result on screen."""
        if self.parameters is None:
            return
        changed = self.parameters.modelPath != path
        self.parameters.modelPath = path
        entry = self.logic.modelRegistry().find(path) if path else None
        if changed and entry is not None and entry.threshold is not None and self.parameters.result is None:
            self.parameters.threshold = min(SLIDER_RANGE[1], max(SLIDER_RANGE[0], entry.threshold))
        if changed and entry is not None and entry.error is None and self.warmUp is not None:
            self.startWorker()
        self.changed()

    def addModelFile(self, path: str) -> None:
        """Copy a model file into the models folder and select it."""
        if not path:
            return
        with self._errors("The model file cannot be added."):
            self.refreshModels(select=str(self.logic.addModelFile(path)))

    # ---------------------------------------------------------------------- segment & classify

    def apply(self) -> None:
        """Apply: segment and classify the input (a frame of a sequence: the whole sequence, if the
        user says so); Cancel while it runs."""
        if self.predictionTask is not None:
            self.logic.cancel(self.predictionTask)
            return
        if not self.ensureRequirements():
            return
        parameters = self.parameters
        inputNode = parameters.inputNode
        sequence = nodes.sequenceOfProxy(inputNode) if inputNode.IsA("vtkMRMLVolumeNode") else None
        if sequence is not None and self.view.confirm(
                f"{inputNode.GetName()} is a frame of the sequence {sequence.GetName()}. "
                f"Segment all {sequence.GetNumberOfDataNodes()} frames?", "MFFMT: segment a sequence"):
            inputNode = sequence
        with self._errors("Segmentation could not start."):
            self.predictionTask = self.logic.startProcessing(
                inputNode, model=self.currentModel() or None, threshold=parameters.threshold,
                roiNode=parameters.roiNode, gradcam=parameters.gradcam, device=parameters.device,
                progressCallback=self.predictionProgress, completedCallback=self.predictionCompleted)
            self.status, self.progress = "Starting...", 0
        self.changed()

    def predictionProgress(self, task) -> None:
        self.progress = int(100 * task.progress.fraction)
        self.status = "Segmenting and classifying..." if not task.progress.done else "Reading results..."
        self.changed()

    def predictionCompleted(self, task) -> None:
        self.predictionTask, self.progress = None, None
        if task.status == "cancelled":
            self.status = "Cancelled."
        elif task.status != "done":
            self.status = f"Failed: {one_line(task.error)}"
            if self.currentModel() and self.logic.worker.unusable(self.currentModel()):
                self.refreshModels()  # the worker refused the model: the list says so; it kept the one it had
            self.view.showError(f"Segmentation of {task.inputVolume.GetName()} failed:\n\n{task.error}")
        else:
            self.parameters.result = task.segmentationNode
            self.showResult(task.segmentationNode, task.results)
        self.changed()

    def showResult(self, segmentationNode, rows: list[dict[str, Any]]) -> None:
        """The input with the lesion, the table in the layout's table view, a summary below Apply."""
        if segmentationNode.GetNodeReference(nodes.GRADCAM_ROLE) is None:
            self.view.showVolume(segmentationNode.GetNodeReference(nodes.INPUT_ROLE), True)
        segmentationNode.CreateDefaultDisplayNodes()
        table = segmentationNode.GetNodeReference(nodes.TABLE_ROLE)
        nodes.showResultsTable(table)
        self.status = resultSummary(rows, table.GetName())

    def applyThreshold(self) -> None:
        """Redraw the last result at the slider's threshold (no network run)."""
        result = self.parameters.result if self.parameters is not None else None
        if result is None or self.predictionTask is not None:
            return
        with self._errors("The lesion cannot be redrawn."):
            self.showResult(result, self.logic.updateThreshold(result, self.parameters.threshold))
        self.changed()

    # ------------------------------------------------------------------------------------ live

    def toggleLive(self, record: bool) -> None:
        """Start live mode on the input, or stop it."""
        if self.logic.live is not None:
            self.stopLive()
            return
        if not self.ensureRequirements():
            return
        parameters = self.parameters
        with self._errors("Live mode could not start."):
            session = self.logic.startLive(parameters.inputNode, model=self.currentModel() or None,
                                           threshold=parameters.threshold, device=parameters.device, record=record)
            self.view.showVolume(session.volumeNode, False)
            self.showLive(session)
        self.changed()

    def pollLive(self) -> None:
        """Take over a finished frame and send the next (the live timer's slot)."""
        session = self.logic.live
        if session is None or not session.running:  # stopped by the logic (its volume was removed)
            self.stopLive()
            return
        session.poll()
        self.showLive(session)
        self.changed()

    def showLive(self, session) -> None:
        """The running class, this frame's result and the frame counts."""
        lines = [session.runningSummary()]
        if session.lastRow is not None:
            lines.append(f"this frame: {lesion_label(session.lastRow)}")
        if session.lastError:
            lines.append(f"last failure: {session.lastError}")
        self.liveClass = "\n".join(lines)
        self.liveCounts = (f"{session.processed} segmented, {session.dropped} skipped (a newer frame came), "
                           f"{session.failed} failed, of {session.received} received")

    def stopLive(self) -> None:
        """Stop live mode; the live nodes keep the last frame's result, a recording is ready to browse."""
        session = self.logic.stopLive()
        if session is not None:
            self.showLive(session)
            if session.browserNode is not None:
                self.liveCounts += f"; recorded in {session.browserNode.GetName()}"
            self.changed()

    # --------------------------------------------------------------------------------- retrain

    def pollTasks(self) -> None:
        """Follow running work (the polling timer's slot; the state says when it may stop)."""
        for task in (self.predictionTask, self.trainingTask):
            if task is not None:
                task.poll()
        self.changed()

    def sceneCandidates(self) -> list[tuple[Any, Any, str]]:
        """(volume, segmentation or None, label or :data:`NO_LABEL`) for the scene data list."""
        return [(volume, segmentation, label or NO_LABEL)
                for volume, segmentation, label in self.logic.sceneTrainingCandidates(slicer.mrmlScene)]

    def setTrainingLabel(self, volumeNode, text: str) -> None:
        self.logic.setTrainingLabel(volumeNode, None if text == NO_LABEL else text)

    def train(self, dataPaths: list[str]) -> None:
        """Train: fine-tune the selected model (or train from scratch) on the chosen data; Cancel
        training while it runs (it stops at the next safe point)."""
        if self.trainingTask is not None:
            self.logic.cancelTraining(self.trainingTask)
            self.trainStatus = "Stopping at the next safe point..."
            self.changed()
            return
        if not self.ensureRequirements():
            return
        with self._errors("Training could not start."):
            parameters = self.parameters
            data = [path for path in dataPaths if path]
            sceneItems = []
            if parameters.useSceneData:
                sceneItems = [(v, s, label) for v, s, label in self.logic.sceneTrainingCandidates(slicer.mrmlScene)
                              if s or label]
            if not data and not sceneItems:
                raise ValueError("No training data: choose a dataset folder or a datalist, or label and segment "
                                 "volumes in the scene and tick 'Use scene volumes'.")
            initModel = self.currentModel() if parameters.startFrom == FINE_TUNE else None
            if parameters.startFrom == FINE_TUNE and not initModel:
                raise ValueError("No model to fine-tune: choose a model, or train from scratch.")
            self.resetCurves()
            self.trainingTask = self.logic.startTraining(
                data, modelName=parameters.modelName or "my_model", sceneItems=sceneItems, device=parameters.device,
                progressCallback=self.trainingProgress, completedCallback=self.trainingCompleted,
                **{**trainingOptions(parameters), "init_model": initModel})
            self.trainStatus = f"Starting training in {self.trainingTask.runDir}..."
            self.trainWarning, self.trainProgress = "", 0
        self.changed()

    def resetCurves(self) -> None:
        """Empty training curves, in a chart of the scene (made anew when the scene lost it)."""
        if not nodes.curvesInScene(self._curves, slicer.mrmlScene):
            self._curves = nodes.trainingCurvesChart(slicer.mrmlScene)
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "MFFMT training plot view")
            viewNode.SetPlotChartNodeID(self._curves[1].GetID())
            self.view.showPlot(viewNode)
        nodes.updateTrainingCurves(self._curves[0], [])

    def trainingProgress(self, task) -> None:
        self.trainProgress = int(100 * task.state.fraction)
        if task.cancelRequestedAt is None:
            self.trainStatus = task.state.summary()
        if not nodes.curvesInScene(self._curves, slicer.mrmlScene):  # the scene was closed meanwhile
            self.resetCurves()
        nodes.updateTrainingCurves(self._curves[0], task.state.history)

    def trainingCompleted(self, task) -> None:
        self.trainingTask, self.trainProgress = None, None
        if task.status == "done":
            self.refreshModels(select=str(task.modelPath))
        elif task.status == "failed":
            self.view.showError(f"Training failed:\n\n{task.error}\n\nRun folder: {task.runDir}")
        report = self.trainingReport(task)
        self.showTrainingSummary(report.text, report.warning)

    def trainingReport(self, task) -> TrainingReport:
        """The Retrain tab's summary of a finished, cancelled or failed training: the hook where a
        fuller report (e.g. how the new model does on the user's data) plugs in, by overriding or
        assigning ``presenter.trainingReport``; :meth:`showTrainingSummary` shows what it returns."""
        if task.status == "done":
            text = f"{task.state.summary()}\nNew model: {Path(task.modelPath).name} (selected above)."
            if task.siteReport is not None:  # a fine-tuning run: how both models do on the user's patients
                return TrainingReport(f"{text}\n{summary_text({**task.siteReport, 'warning': None})}",
                                      task.siteReport.get("warning") or "")
            return TrainingReport(f"{text}\n{task.siteReportText}" if task.siteReportText else text)
        if task.status == "cancelled":
            return TrainingReport(
                f"Cancelled; no model was added and the selected model is unchanged. The best model so far is in "
                f"{task.runDir} (model.safetensors): 'Add model file...' can add it.")
        return TrainingReport("Training failed; no model was added.")

    def showTrainingSummary(self, text: str, warning: str = "") -> None:
        """Training ended: show this summary and, when not empty, this warning in the Retrain tab."""
        self.trainStatus, self.trainWarning = text, warning
        self.changed()


def resultSummary(rows: list[dict[str, Any]], tableName: str) -> str:
    """The lines shown below Apply: each frame's finding (the first :data:`SHOWN_ROWS`), and for one
    frame the lesion's size (mm² where the image is calibrated, else pixels) or that none was found."""
    lines = [lesion_label(row, with_frame=len(rows) > 1) for row in rows[:SHOWN_ROWS]]
    if len(rows) > SHOWN_ROWS:
        lines.append(f"... {len(rows) - SHOWN_ROWS} more frames in the table {tableName}")
    if len(rows) == 1 and not rows[0]["error"]:
        area, pixels = rows[0]["lesion_area_mm2"], rows[0]["lesion_area_px"]
        if not pixels > 0:
            lines[0] += ", no lesion found"
        elif math.isfinite(area):
            lines[0] += f", lesion {area:.0f} mm\u00b2"
        else:  # a picture (PNG, JPEG): no physical pixel spacing
            lines[0] += f", lesion {pixels:.0f} pixels"
    return "\n".join(lines)


def _logStartFailure(future) -> None:
    if not future.cancelled() and future.exception() is not None:
        logging.warning(f"MFFMT: the worker did not start: {one_line(future.exception())}")


class _ShowErrors:
    """A context that shows an exception as an error message (the first line names the action) and
    stops it there; the panel stays usable."""

    def __init__(self, presenter: MFFMTSlicerPresenter, what: str):
        self.presenter, self.what = presenter, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, traceback) -> bool:
        if error is None or not isinstance(error, Exception):
            return False
        logging.error(f"MFFMT: {self.what} {error}")
        self.presenter.view.showError(f"{self.what}\n\n{error}")
        return True
