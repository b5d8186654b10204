"""MFFMTSlicerWidget: the module panel. Slicer only.

The panel (Resources/UI/MFFMTSlicer.ui) has a model section (model, add model file, device) and
two tabs: "Segment & classify" and "Retrain". Settings live in the parameter node
(:class:`MFFMTSlicerParameterNode`, bound to the widgets through their ``SlicerParameterName``
properties). The panel's decisions are the presenter's (:class:`MFFMTSlicerPresenter`, Qt-free and
tested on slicer-core): this file only binds Qt signals to it, shows its :class:`PanelState` and
provides the dialogs, views and timers it asks for (:class:`PanelView`).
"""

import importlib
import sys

import qt
import slicer
import vtk
from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget
from slicer.util import VTKObservationMixin

from MFFMTCore.base.labels import IMAGE_LABELS
from MFFMTSlicerLib.slicer_logic import MFFMTSlicerLogic
from MFFMTSlicerLib.slicer_presenter import NO_LABEL, MFFMTSlicerPresenter, PanelState

# Reloaded in this order by "Reload" in developer mode (dependencies first).
LIB_MODULES = ("volumes", "commands", "dependencies", "models", "process", "progress", "results", "scene_data",
               "tasks", "worker", "slicer_nodes", "slicer_requirements", "slicer_models",
               "slicer_prediction", "slicer_live", "slicer_training", "slicer_logic", "slicer_presenter",
               "slicer_widget")
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
        self.presenter = None
        self._boundParameters = None  # the parameter node the widgets are bound to
        self._shown = False  # between setup or enter and exit: the widgets follow the parameter node
        self._parameterNodeGuiTag = None
        self._shownModels = None  # the model list the selector holds
        self._plotWidget = None
        self._thresholdTimer = None
        self._pollTimer = None
        self._liveTimer = None

    # ----------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/MFFMTSlicer.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = MFFMTSlicerLogic()
        self.presenter = MFFMTSlicerPresenter(self.logic, self)

        self._plotWidget = slicer.qMRMLPlotWidget()
        self._plotWidget.setMRMLScene(slicer.mrmlScene)
        self._plotWidget.minimumHeight = 180
        self.ui.trainingPlotFrame.layout().addWidget(self._plotWidget)

        # Redraw the lesion a moment after the slider stops moving, not at every step.
        self._thresholdTimer = qt.QTimer()
        self._thresholdTimer.setSingleShot(True)
        self._thresholdTimer.setInterval(250)
        self._thresholdTimer.timeout.connect(self.presenter.applyThreshold)
        # Follows running work from the GUI's event loop, so the panel stays responsive.
        self._pollTimer = qt.QTimer()
        self._pollTimer.setInterval(POLL_INTERVAL_MS)
        self._pollTimer.timeout.connect(self.presenter.pollTasks)
        # Live mode: the logic needs no event loop; this timer drives it (see LiveSession.poll).
        self._liveTimer = qt.QTimer()
        self._liveTimer.setInterval(LIVE_POLL_INTERVAL_MS)
        self._liveTimer.timeout.connect(self.presenter.pollLive)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.ui.applyButton.connect("clicked(bool)", lambda checked: self.presenter.apply())
        self.ui.liveButton.connect("clicked(bool)",
                                   lambda checked: self.presenter.toggleLive(self.ui.liveRecordCheckBox.checked))
        self.ui.trainButton.connect("clicked(bool)", lambda checked: self.presenter.train(
            [self.ui.dataFolderPathLineEdit.currentPath, self.ui.datalistPathLineEdit.currentPath]))
        self.ui.addModelButton.connect("clicked(bool)", self.onAddModelFile)
        self.ui.openModelsFolderButton.connect("clicked(bool)", self.onOpenModelsFolder)
        self.ui.modelComboBox.connect("currentIndexChanged(int)", self.onModelChanged)
        self.ui.thresholdSlider.connect("valueChanged(double)", lambda value: self._thresholdTimer.start())
        self.ui.refreshSceneDataButton.connect("clicked(bool)", self.refreshSceneData)

        self._shown = True
        self.presenter.initializeParameterNode()
        self.refreshSceneData()

    def cleanup(self) -> None:
        """Called when the application closes or the module is reloaded: stop running work."""
        self._pollTimer.stop()
        self._liveTimer.stop()
        self.presenter.cleanup()
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
        self._shown = True
        self.presenter.enter()  # also starts the warm worker, so the first Apply finds it ready
        self.refreshSceneData()

    def exit(self) -> None:
        self._shown = False
        self._bindParameters(None)

    def onSceneStartClose(self, caller, event) -> None:
        self.presenter.sceneStartClose()

    def onSceneEndClose(self, caller, event) -> None:
        self.presenter.sceneEndClose(self.parent.isEntered)

    def _bindParameters(self, parameters) -> None:
        """Bind the widgets that have a "SlicerParameterName" property in the .ui to ``parameters``."""
        if parameters is self._boundParameters:
            return
        if self._boundParameters is not None:
            self._boundParameters.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._boundParameters, vtk.vtkCommand.ModifiedEvent, self.onParametersModified)
            self._parameterNodeGuiTag = None
        self._boundParameters = parameters
        if parameters is not None:
            self._parameterNodeGuiTag = parameters.connectGui(self.ui)
            self.addObserver(parameters, vtk.vtkCommand.ModifiedEvent, self.onParametersModified)

    def onParametersModified(self, caller=None, event=None) -> None:
        self.presenter.parametersChanged()

    # ---------------------------------------------------------------------- the presenter's view

    def render(self, state: PanelState) -> None:
        """Show the presenter's state; start or stop the polling timers."""
        if self._shown:
            self._bindParameters(self.presenter.parameters)
        for button, shown in ((self.ui.applyButton, state.apply), (self.ui.liveButton, state.live),
                              (self.ui.trainButton, state.train)):
            button.text, button.enabled, button.toolTip = shown.text, shown.enabled, shown.toolTip
        self.ui.liveRecordCheckBox.enabled = state.liveRecordEnabled
        self.ui.backboneComboBox.enabled = state.backboneEnabled
        self._showModels(state)
        self.ui.modelInfoLabel.text = state.modelInfo
        self.ui.statusLabel.text = state.status
        self.ui.liveClassLabel.text, self.ui.liveCountsLabel.text = state.liveClass, state.liveCounts
        self.ui.trainStatusLabel.text = state.trainStatus + (f"\nWarning: {state.trainWarning}" if state.trainWarning
                                                             else "")
        for bar, value in ((self.ui.progressBar, state.progress), (self.ui.trainProgressBar, state.trainProgress)):
            bar.visible = value is not None
            bar.value = value or 0
        for timer, running in ((self._pollTimer, state.polling), (self._liveTimer, state.livePolling)):
            if running and not timer.isActive():
                timer.start()
            elif not running and timer.isActive():
                timer.stop()

    def _showModels(self, state: PanelState) -> None:
        combo = self.ui.modelComboBox
        wasBlocked = combo.blockSignals(True)
        if state.models != self._shownModels:
            combo.clear()
            for choice in state.models:
                combo.addItem(choice.title, choice.path)
                combo.setItemData(combo.count - 1, choice.description, qt.Qt.ToolTipRole)
            self._shownModels = list(state.models)
        combo.currentIndex = state.modelIndex
        combo.blockSignals(wasBlocked)

    def confirm(self, text: str, title: str) -> bool:
        return slicer.util.confirmYesNoDisplay(text, windowTitle=title)

    def showError(self, text: str) -> None:
        slicer.util.errorDisplay(text)

    def showVolume(self, volumeNode, fit: bool) -> None:
        slicer.util.setSliceViewerLayers(background=volumeNode, fit=fit)

    def showPlot(self, plotViewNode) -> None:
        self._plotWidget.setMRMLPlotViewNode(plotViewNode)

    # --------------------------------------------------------------------------------- slots

    def onModelChanged(self, index: int) -> None:
        self.presenter.selectModel((self.ui.modelComboBox.itemData(index) or "") if index >= 0 else "")

    def onAddModelFile(self) -> None:
        path = qt.QFileDialog.getOpenFileName(self.parent, "Add an MFFMT model file", "",
                                              "MFFMT model (*.safetensors)")
        self.presenter.addModelFile(path)

    def onOpenModelsFolder(self) -> None:
        folder = self.logic.modelsFolder
        folder.mkdir(parents=True, exist_ok=True)
        qt.QDesktopServices.openUrl(qt.QUrl.fromLocalFile(str(folder)))

    def refreshSceneData(self) -> None:
        """List the scene's image volumes with their segmentation and a label chooser."""
        table = self.ui.sceneDataTable
        candidates = self.presenter.sceneCandidates()
        table.clearContents()
        table.setColumnCount(3)
        table.setHorizontalHeaderLabels(["Volume", "Segmentation", "Label"])
        table.setRowCount(len(candidates))
        choices = [NO_LABEL, *IMAGE_LABELS]
        for row, (volume, segmentation, label) in enumerate(candidates):
            table.setItem(row, 0, qt.QTableWidgetItem(volume.GetName()))
            table.setItem(row, 1, qt.QTableWidgetItem(segmentation.GetName() if segmentation else "(none)"))
            chooser = qt.QComboBox()
            chooser.addItems(choices)
            chooser.currentIndex = choices.index(label)
            chooser.currentTextChanged.connect(lambda text, v=volume: self.presenter.setTrainingLabel(v, text))
            table.setCellWidget(row, 2, chooser)
        table.resizeColumnsToContents()
