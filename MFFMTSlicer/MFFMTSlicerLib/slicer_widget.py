"""MFFMTSlicerWidget: the module panel. Slicer only.

The panel (Resources/UI/MFFMTSlicer.ui) has a model section (model, add model file, device) and
two tabs: "Segment & classify" and "Retrain". Settings live in the parameter node
(:class:`MFFMTSlicerParameterNode`, bound to the widgets through their ``SlicerParameterName``
properties); the work is done by :class:`MFFMTSlicerLogic` in background processes, so the panel
only starts, follows and cancels it. Errors are shown here, never in the logic.
"""

import importlib
import logging
import math
import sys
from pathlib import Path

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MFFMTCore.base.labels import IMAGE_LABELS
from MFFMTSlicerLib import slicer_nodes as nodes
from MFFMTSlicerLib.results import lesion_label
from MFFMTSlicerLib.slicer_logic import FINE_TUNE, MFFMTSlicerLogic, trainingOptions
from MFFMTSlicerLib.slicer_training import learningRateAfterModeChange

# Reloaded in this order by "Reload" in developer mode (dependencies first).
LIB_MODULES = ("volumes", "commands", "dependencies", "models", "process", "progress", "results", "scene_data",
               "tasks", "worker", "slicer_nodes", "slicer_requirements", "slicer_models",
               "slicer_prediction", "slicer_live", "slicer_training", "slicer_logic", "slicer_widget")
NO_LABEL = "(no label)"
# How often running work is polled (milliseconds): a warm worker answers in a fraction of a second.
POLL_INTERVAL_MS = 50
# How often live mode takes over results and sends the next frame (milliseconds).
LIVE_POLL_INTERVAL_MS = 20


class MFFMTSlicerWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    """The MFFMT module panel."""

    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._predictionTask = None
        self._trainingTask = None
        self._curves = None  # (table node, chart node) of the training curves
        self._plotWidget = None
        self._thresholdTimer = None
        self._pollTimer = None
        self._liveTimer = None
        self._startFrom = None  # the retraining mode the learning rate was last suggested for

    # ----------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MFFMTSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MFFMTSlicerLogic()

        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self._plotWidget.minimumHeight = 180
        self.ui.trainingPlotFrame.layout().addWidget(self._plotWidget)

        # Redraw the lesion a moment after the slider stops moving, not at every step.
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(250)
        self._thresholdTimer.timeout.connect(self.applyThreshold)
        # Follows running work from the GUI's event loop, so the panel stays responsive.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.pollTasks)
        # Live mode: the logic needs no event loop; this timer drives it (see LiveSession.poll).
        self._liveTimer = qt.QTimer()
        self._liveTimer.setInterval(LIVE_POLL_INTERVAL_MS)
        self._liveTimer.timeout.connect(self.pollLive)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.liveButton.connect("clicked(bool)", self.onLiveButton)
        self.ui.trainButton.connect("clicked(bool)", self.onTrainButton)
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelFile)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self._thresholdTimer.start())
        self.ui.refreshSceneDataButton.connect("clicked(bool)", self.refreshSceneData)
        self.ui.progressBar.hide()
        self.ui.trainProgressBar.hide()

        self.initializeParameterNode()
        self.refreshModels()
        self.refreshSceneData()
        self.updateButtons()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop running work."""
        if self._predictionTask is not None:
            self.logic.cancel(self._predictionTask)
        if self._trainingTask is not None:
            self.logic.cancelTraining(self._trainingTask)
            self._trainingTask.process.terminate(grace_s=5.0)
        self._pollTimer.stop()
        self.stopLive()
        self.logic.closeWorker()
        self.removeObservers()

    def onReload(self) -> None:
        """Developer mode "Reload": reload the helper modules too, not only this module's file."""
        for name in LIB_MODULES:
            module = sys.modules.get(f"MFFMTSlicerLib.{name}")
            if module is not None:
                importlib.reload(module)
        ScriptedLoadableModuleWidget.onReload(self)

    # ------------------------------------------------------------------------ parameter node

    def enter(self) -> None:
        self.initializeParameterNode()
        self.refreshSceneData()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.stopLive()
        self.setParameterNode(None)
        # The scene's nodes go: the next training makes new curves.
        self._curves = None
        self._plotWidget.setMRMLPlotViewNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputNode:
            firstVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolume and not firstVolume.IsA("vtkMRMLLabelMapVolumeNode"):
                self._parameterNode.inputNode = firstVolume

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        self._startFrom = inputParameterNode.startFrom if inputParameterNode else None
        if self._parameterNode:
            # Widgets with a "SlicerParameterName" property in the .ui are bound to those parameters.
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.updateButtons()

    def updateButtons(self, caller=None, event=None) -> None:
        """Enable the buttons that can act now; Apply and Train become Cancel while their work runs.

        Also suggests a learning rate when the user switches the retraining mode: from the parameter
        node, not from the combo box, which the parameter node wrapper refills whenever the panel is
        entered (a slot on it would overwrite the user's rate each time).
        """
        parameters = self._parameterNode
        if parameters is not None and parameters.startFrom != self._startFrom:
            if self._startFrom is not None:
                parameters.lr = learningRateAfterModeChange(self._startFrom, parameters.startFrom, parameters.lr)
            self._startFrom = parameters.startFrom
        hasModel = bool(self.currentModelPath())
        if self._predictionTask is not None:
            self.ui.applyButton.text, self.ui.applyButton.enabled = "Cancel", True
            self.ui.applyButton.toolTip = "Stop the running segmentation"
        else:
            self.ui.applyButton.text = "Apply"
            ready = parameters is not None and parameters.inputNode is not None and hasModel
            self.ui.applyButton.enabled = ready
            self.ui.applyButton.toolTip = ("Segment the lesion and classify it" if ready else
                                           "Choose an input and a model (add a model file or train one)")
        if self._trainingTask is not None:
            self.ui.trainButton.text = "Cancel training"
            self.ui.trainButton.enabled = self._trainingTask.cancelRequestedAt is None
        else:
            self.ui.trainButton.text, self.ui.trainButton.enabled = "Train", parameters is not None
        self.updateLiveButton()
        fineTune = parameters is not None and parameters.startFrom == FINE_TUNE
        # A fine-tuned model keeps the backbone of the model it starts from.
        self.ui.backboneComboBox.enabled = not fineTune

    # --------------------------------------------------------------------------------- models

    def currentModelPath(self) -> str:
        index = self.ui.modelComboBox.currentIndex
        if index < 0:
            return ""
        return self.ui.modelComboBox.itemData(index) or ""

    def refreshModels(self, select: str | None = None) -> None:
        """Fill the model selector: the default model first, then the models folder."""
        combo = self.ui.modelComboBox
        wanted = str(select) if select else (self._parameterNode.modelPath if self._parameterNode else "")
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        for entry in self.logic.models():
            if entry.error:
                logging.warning(f"MFFMT: model not listed: {entry.error}")
                continue
            combo.addItem(entry.title(), str(entry.path))
            combo.setItemData(combo.count - 1, entry.description(), qt.Qt.ToolTipRole)
        paths = [combo.itemData(i) for i in range(combo.count)]
        combo.currentIndex = paths.index(wanted) if wanted in paths else (0 if paths else -1)
        combo.blockSignals(wasBlocked)
        self.onModelChanged()

    def onModelChanged(self, index=None) -> None:
        path = self.currentModelPath()
        entry = self.logic.modelRegistry().find(path) if path else None
        if self._parameterNode:
            self._parameterNode.modelPath = path
            # Start from the model's own threshold, unless that would redraw a result on screen.
            if entry is not None and entry.threshold is not None and self._parameterNode.result is None:
                self._parameterNode.threshold = min(0.99, max(0.01, entry.threshold))
        self.ui.modelInfoLabel.text = (entry.description() if entry else
                                       "No model yet: add a model file or train one in the Retrain tab.")
        self.updateButtons()

    def onAddModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Add an MFFMT model file", "",
                                              "MFFMT model (*.safetensors)")
        if not path:
            return
        with slicer.util.tryWithErrorDisplay("The model file cannot be added.", waitCursor=True):
            added = self.logic.addModelFile(path)
            self.refreshModels(select=str(added))

    def onOpenModelsFolder(self) -> None:
        folder = self.logic.modelsFolder
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def ensureRequirements(self) -> bool:
        """Offer to install missing Python packages; True when everything needed is there."""
        missing = self.logic.missingRequirements()
        if not missing:
            return True
        text = ("MFFMT needs these Python packages, which Slicer's Python does not have yet:\n\n"
                + "\n".join(f"  - {status.describe()}" for status in missing)
                + "\n\nInstall them now? PyTorch alone downloads several hundred megabytes and the installation"
                " can take several minutes. Slicer may need a restart afterwards.")
        if not slicer.util.confirmOkCancelDisplay(text, "MFFMT: install Python packages"):
            return False
        with slicer.util.tryWithErrorDisplay("Installing the Python packages failed.", waitCursor=True):
            self.logic.installRequirements(missing)
        return True

    # ---------------------------------------------------------------------- segment & classify

    def onApplyButton(self) -> None:
        if self._predictionTask is not None:
            self.logic.cancel(self._predictionTask)
            return
        if not self.ensureRequirements():
            return
        parameters = self._parameterNode
        inputNode = parameters.inputNode
        sequence = nodes.sequenceOfProxy(inputNode) if inputNode.IsA("vtkMRMLVolumeNode") else None
        if sequence is not None and slicer.util.confirmYesNoDisplay(
                f"{inputNode.GetName()} is a frame of the sequence {sequence.GetName()}. "
                f"Segment all {sequence.GetNumberOfDataNodes()} frames?"):
            inputNode = sequence
        with slicer.util.tryWithErrorDisplay("Segmentation could not start.", waitCursor=True):
            self._predictionTask = self.logic.startProcessing(
                inputNode, model=self.currentModelPath() or None, threshold=parameters.threshold,
                roiNode=parameters.roiNode, gradcam=parameters.gradcam, device=parameters.device,
                progressCallback=self.onPredictionProgress, completedCallback=self.onPredictionCompleted)
            self._pollTimer.start()
        self.ui.statusLabel.text = "Starting..."
        self.ui.progressBar.value = 0
        self.ui.progressBar.show()
        self.updateButtons()

    def onPredictionProgress(self, task) -> None:
        self.ui.progressBar.value = int(100 * task.progress.fraction)
        self.ui.statusLabel.text = "Segmenting and classifying..." if not task.progress.done else "Reading results..."

    def onPredictionCompleted(self, task) -> None:
        self._predictionTask = None
        self.ui.progressBar.hide()
        self.updateButtons()
        if task.status == "cancelled":
            self.ui.statusLabel.text = "Cancelled."
            return
        if task.status != "done":
            self.ui.statusLabel.text = "Failed."
            slicer.util.errorDisplay(f"Segmentation of {task.inputVolume.GetName()} failed:\n\n{task.error}")
            return
        self._parameterNode.result = task.segmentationNode
        self.showResult(task.segmentationNode, task.results)

    def showResult(self, segmentationNode, rows) -> None:
        """Show the input with the lesion, the table in the layout's table view, a summary below Apply."""
        inputVolume = segmentationNode.GetNodeReference(nodes.INPUT_ROLE)
        if segmentationNode.GetNodeReference(nodes.GRADCAM_ROLE) is None:
            slicer.util.setSliceViewerLayers(background=inputVolume, fit=True)
        segmentationNode.CreateDefaultDisplayNodes()
        table = segmentationNode.GetNodeReference(nodes.TABLE_ROLE)
        nodes.showResultsTable(table)
        lines = [lesion_label(row, with_frame=len(rows) > 1) for row in rows[:8]]
        if len(rows) > 8:
            lines.append(f"... {len(rows) - 8} more frames in the table {table.GetName()}")
        if len(rows) == 1 and not rows[0]["error"]:
            area, pixels = rows[0]["lesion_area_mm2"], rows[0]["lesion_area_px"]
            if not pixels > 0:
                lines[0] += ", no lesion found"
            elif math.isfinite(area):
                lines[0] += f", lesion {area:.0f} mm\u00b2"
            else:  # a picture (PNG, JPEG): no physical pixel spacing
                lines[0] += f", lesion {pixels:.0f} pixels"
        self.ui.statusLabel.text = "\n".join(lines)

    def applyThreshold(self) -> None:
        """Redraw the last result at the slider's threshold (no network run)."""
        result = self._parameterNode.result if self._parameterNode else None
        if result is None or self._predictionTask is not None:
            return
        with slicer.util.tryWithErrorDisplay("The lesion cannot be redrawn.", waitCursor=True):
            rows = self.logic.updateThreshold(result, self._parameterNode.threshold)
            self.showResult(result, rows)

    # ------------------------------------------------------------------------------------ live

    def updateLiveButton(self) -> None:
        if self.logic.live is not None:
            self.ui.liveButton.text, self.ui.liveButton.enabled = "Stop live", True
            self.ui.liveRecordCheckBox.enabled = False
            return
        inputNode = self._parameterNode.inputNode if self._parameterNode else None
        self.ui.liveButton.text = "Start live"
        self.ui.liveButton.enabled = inputNode is not None and bool(self.currentModelPath())
        self.ui.liveRecordCheckBox.enabled = True

    def onLiveButton(self) -> None:
        if self.logic.live is not None:
            self.stopLive()
            return
        if not self.ensureRequirements():
            return
        parameters = self._parameterNode
        with slicer.util.tryWithErrorDisplay("Live mode could not start.", waitCursor=True):
            session = self.logic.startLive(parameters.inputNode, model=self.currentModelPath() or None,
                                           threshold=parameters.threshold, device=parameters.device,
                                           record=self.ui.liveRecordCheckBox.checked)
            slicer.util.setSliceViewerLayers(background=session.volumeNode)
            self._liveTimer.start()
            self.showLive(session)
        self.updateButtons()

    def pollLive(self) -> None:
        """Take over a finished frame and send the next (the timer's slot)."""
        session = self.logic.live
        if session is None or not session.running:  # stopped by the logic (its volume was removed)
            self.stopLive()
            return
        session.poll()
        self.showLive(session)

    def showLive(self, session) -> None:
        """The running class, this frame's result and the frame counts."""
        lines = [session.runningSummary()]
        if session.lastRow is not None:
            lines.append(f"this frame: {lesion_label(session.lastRow)}")
        if session.lastError:
            lines.append(f"last failure: {session.lastError}")
        self.ui.liveClassLabel.text = "\n".join(lines)
        self.ui.liveCountsLabel.text = (f"{session.processed} segmented, {session.dropped} skipped (a newer frame came),"
                                        f" {session.failed} failed, of {session.received} received")

    def stopLive(self) -> None:
        """Stop live mode; the live nodes keep the last frame's result, a recording is ready to browse."""
        if self._liveTimer is not None:
            self._liveTimer.stop()
        session = self.logic.stopLive() if self.logic is not None else None
        if session is not None:
            self.showLive(session)
            if session.browserNode is not None:
                self.ui.liveCountsLabel.text += f"; recorded in {session.browserNode.GetName()}"
            self.updateButtons()

    # --------------------------------------------------------------------------------- retrain

    def pollTasks(self) -> None:
        """Follow running work; the timer stops when nothing runs."""
        for task in (self._predictionTask, self._trainingTask):
            if task is not None:
                task.poll()
        if self._predictionTask is None and self._trainingTask is None:
            self._pollTimer.stop()

    def refreshSceneData(self) -> None:
        """List the scene's image volumes with their segmentation and a label chooser."""
        table = self.ui.sceneDataTable
        candidates = self.logic.sceneTrainingCandidates(slicer.mrmlScene)
        table.clearContents()
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels(["Volume", "Segmentation", "Label"])
        table.setRowCount(len(candidates))
        for row, (volume, segmentation, label) in enumerate(candidates):
            table.setItem(row, 0, qt.QTableWidgetItem(volume.GetName()))
            table.setItem(row, 1, qt.QTableWidgetItem(segmentation.GetName() if segmentation else "(none)"))
            chooser = qt.QComboBox()
            choices = [NO_LABEL, *IMAGE_LABELS]
            chooser.addItems(choices)
            chooser.currentIndex = choices.index(label) if label in choices else 0
            chooser.currentTextChanged.connect(
                lambda text, v=volume: self.logic.setTrainingLabel(v, None if text == NO_LABEL else text))
            table.setCellWidget(row, 2, chooser)
        table.resizeColumnsToContents()

    def onTrainButton(self) -> None:
        if self._trainingTask is not None:
            self.logic.cancelTraining(self._trainingTask)
            self.ui.trainStatusLabel.text = "Stopping at the next safe point..."
            self.updateButtons()
            return
        if not self.ensureRequirements():
            return
        with slicer.util.tryWithErrorDisplay("Training could not start.", waitCursor=True):
            parameters = self._parameterNode
            data = [path for path in (self.ui.dataFolderPathLineEdit.currentPath,
                                      self.ui.datalistPathLineEdit.currentPath) if path]
            sceneItems = []
            if parameters.useSceneData:
                sceneItems = [(v, s, label) for v, s, label in self.logic.sceneTrainingCandidates(slicer.mrmlScene)
                              if s or label]
            if not data and not sceneItems:
                raise ValueError("No training data: choose a dataset folder or a datalist, or label and segment "
                                 "volumes in the scene and tick 'Use scene volumes'.")
            initModel = self.currentModelPath() if parameters.startFrom == FINE_TUNE else None
            if parameters.startFrom == FINE_TUNE and not initModel:
                raise ValueError("No model to fine-tune: choose a model, or train from scratch.")
            self.resetCurves()
            self._trainingTask = self.logic.startTraining(
                data, modelName=parameters.modelName or "my_model", sceneItems=sceneItems, device=parameters.device,
                progressCallback=self.onTrainingProgress, completedCallback=self.onTrainingCompleted,
                **{**trainingOptions(parameters), "init_model": initModel})
            self._pollTimer.start()
        self.ui.trainStatusLabel.text = f"Starting training in {self._trainingTask.runDir}..."
        self.ui.trainProgressBar.value = 0
        self.ui.trainProgressBar.show()
        self.updateButtons()

    def resetCurves(self) -> None:
        if not nodes.curvesInScene(self._curves, slicer.mrmlScene):
            self._curves = nodes.trainingCurvesChart(slicer.mrmlScene)
            viewNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLPlotViewNode", "MFFMT training plot view")
            viewNode.SetPlotChartNodeID(self._curves[1].GetID())
            self._plotWidget.setMRMLPlotViewNode(viewNode)
        nodes.updateTrainingCurves(self._curves[0], [])

    def onTrainingProgress(self, task) -> None:
        self.ui.trainProgressBar.value = int(100 * task.state.fraction)
        if task.cancelRequestedAt is None:
            self.ui.trainStatusLabel.text = task.state.summary()
        if not nodes.curvesInScene(self._curves, slicer.mrmlScene):  # the scene was closed meanwhile
            self.resetCurves()
        nodes.updateTrainingCurves(self._curves[0], task.state.history)

    def onTrainingCompleted(self, task) -> None:
        self._trainingTask = None
        self.ui.trainProgressBar.hide()
        self.updateButtons()
        if task.status == "done":
            self.refreshModels(select=str(task.modelPath))
            self.ui.trainStatusLabel.text = (f"{task.state.summary()}\nNew model: {Path(task.modelPath).name} "
                                             "(selected above).")
        elif task.status == "cancelled":
            self.ui.trainStatusLabel.text = (
                f"Cancelled; no model was added and the selected model is unchanged. The best model so far is in "
                f"{task.runDir} (model.safetensors): 'Add model file...' can add it.")
        else:
            self.ui.trainStatusLabel.text = "Training failed; no model was added."
            slicer.util.errorDisplay(f"Training failed:\n\n{task.error}\n\nRun folder: {task.runDir}")
