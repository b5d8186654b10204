"""The panel's Qt bindings (MFFMTSlicerLib/slicer_widget.py) on slicer-core, with stand-ins for Qt.

slicer-core has no Qt. The widget only binds Qt's signals, dialogs and timers to the presenter, so
this test gives it stand-ins that keep what it uses: widgets named as in the .ui file whose
properties hold what is set, signals that can be emitted, a combo box with items, timers that say
whether they run. Then it presses the panel's buttons, as a user would, against the real logic,
scene and worker: a binding to a missing widget, a wrong slot or a state the widget does not show
fails here instead of only in Slicer.
"""

from __future__ import annotations

import inspect
import time
import types
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "MFFMTSlicer"
SAMPLES = REPO / "MFFMTCore" / "samples"

pytestmark = pytest.mark.slow


class Signal:
    """A Qt signal as PythonQt delivers it: a slot that takes fewer arguments gets the first ones."""

    def __init__(self):
        self.slots = []

    def connect(self, slot):
        self.slots.append(slot)

    def emit(self, *args):
        for slot in self.slots:
            parameters = inspect.signature(slot).parameters.values()
            if any(parameter.kind is parameter.VAR_POSITIONAL for parameter in parameters):
                slot(*args)
            else:
                slot(*args[:len([p for p in parameters if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)])])


class Widget:
    """A Qt widget: properties hold what is set; ``connect("signal(args)", slot)`` records the slot;
    any other method is accepted and does nothing (layouts, scenes, sizes)."""

    def __init__(self, name: str = ""):
        self.name, self.text, self.toolTip, self.currentPath = name, "", "", ""
        self.enabled, self.visible, self.checked, self.value = True, True, False, 0
        self.signals: dict[str, Signal] = {}

    def connect(self, signature: str, slot) -> None:
        self.signals.setdefault(signature.split("(")[0], Signal()).connect(slot)

    def emit(self, signal: str, *args) -> None:
        self.signals[signal].emit(*args)

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return lambda *args, **kwargs: Widget(name)


class ComboBox(Widget):
    def __init__(self, name: str = ""):
        super().__init__(name)
        self.items: list[list] = []
        self.currentIndex = -1
        self.blocked = False
        self.currentTextChanged = Signal()

    def blockSignals(self, block: bool) -> bool:
        was, self.blocked = self.blocked, block
        return was

    def clear(self):
        self.items, self.currentIndex = [], -1

    def addItem(self, text, data=None):
        self.items.append([text, data, None])

    def addItems(self, texts):
        for text in texts:
            self.addItem(text)

    def setItemData(self, index, value, role):
        self.items[index][2] = value

    @property
    def count(self) -> int:
        return len(self.items)

    def itemData(self, index):
        return self.items[index][1]


class Table(Widget):
    def __init__(self, name: str = ""):
        super().__init__(name)
        self.cells: dict = {}

    def setItem(self, row, column, item):
        self.cells[row, column] = item

    def setCellWidget(self, row, column, widget):
        self.cells[row, column] = widget

    def clearContents(self):
        self.cells = {}


class Timer:
    def __init__(self):
        self.timeout, self.active = Signal(), False

    def setSingleShot(self, single):
        pass

    def setInterval(self, milliseconds):
        self.interval = milliseconds

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return self.active


def uiVariables(path: Path) -> types.SimpleNamespace:
    """What ``slicer.util.childWidgetVariables`` gives: each named widget of the .ui file."""
    kinds = {"QComboBox": ComboBox, "QTableWidget": Table}
    widgets = {element.get("name"): kinds.get(element.get("class"), Widget)(element.get("name"))
               for element in ElementTree.parse(path).iter("widget")}
    return types.SimpleNamespace(**widgets)


@pytest.fixture
def panel(tmp_path, monkeypatch, slicer_core_session):
    """The widget set up as Slicer sets it up, with Qt stand-ins; yields (widget, ui, calls, scene, slicer)."""
    with slicer_core_session(tmp_path / "slicer") as (scene, slicer, module, _):
        import qt
        from MFFMTSlicerLib.slicer_logic import MFFMTSlicerParameterNode
        from slicer.ScriptedLoadableModule import ScriptedLoadableModuleWidget

        calls: dict[str, list] = {name: [] for name in ("confirm", "error", "layers", "openUrl", "connectGui",
                                                        "disconnectGui", "plot")}
        ui = uiVariables(MODULE / "Resources" / "UI" / "MFFMTSlicer.ui")
        settings = types.SimpleNamespace(value=lambda key: str(tmp_path / "models"))
        for name, value in {"QTimer": Timer, "QComboBox": ComboBox, "QTableWidgetItem": lambda text: text,
                            "Qt": types.SimpleNamespace(ToolTipRole=3), "QSettings": lambda: settings,
                            "QFileDialog": types.SimpleNamespace(getOpenFileName=lambda *args: calls["file"].pop(0)),
                            "QDesktopServices": types.SimpleNamespace(openUrl=calls["openUrl"].append),
                            "QUrl": types.SimpleNamespace(fromLocalFile=lambda path: path)}.items():
            monkeypatch.setattr(qt, name, value, raising=False)
        plotWidget = Widget("plot")
        plotWidget.setMRMLPlotViewNode = calls["plot"].append
        monkeypatch.setattr(slicer, "qMRMLPlotWidget", lambda: plotWidget, raising=False)
        monkeypatch.setattr(slicer.util, "loadUI", lambda path: Widget("uiWidget"))
        monkeypatch.setattr(slicer.util, "childWidgetVariables", lambda widget: ui)
        monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                            lambda text, windowTitle=None: calls["confirm"].append(text) or True, raising=False)
        monkeypatch.setattr(slicer.util, "errorDisplay", calls["error"].append, raising=False)
        monkeypatch.setattr(slicer.util, "setSliceViewerLayers",
                            lambda background=None, fit=False: calls["layers"].append(background), raising=False)
        monkeypatch.setattr(ScriptedLoadableModuleWidget, "setup",
                            lambda self: setattr(self, "layout", Widget("layout")), raising=False)
        monkeypatch.setattr(ScriptedLoadableModuleWidget, "resourcePath",
                            lambda self, name: str(MODULE / "Resources" / name), raising=False)
        monkeypatch.setattr(MFFMTSlicerParameterNode, "connectGui",
                            lambda self, widgets: calls["connectGui"].append(widgets) or "tag", raising=False)
        monkeypatch.setattr(MFFMTSlicerParameterNode, "disconnectGui",
                            lambda self, tag: calls["disconnectGui"].append(tag), raising=False)
        # Slicer's parameter node wrapper passes observers on to its node.
        monkeypatch.setattr(MFFMTSlicerParameterNode, "AddObserver",
                            lambda self, event, method, priority=0.0: self.parameterNode.AddObserver(event, method,
                                                                                                      priority),
                            raising=False)
        monkeypatch.setattr(MFFMTSlicerParameterNode, "RemoveObserver",
                            lambda self, tag: self.parameterNode.RemoveObserver(tag), raising=False)
        calls["file"] = []
        volume = slicer.util.addVolumeFromArray(_sample(), np.diag([-0.1, -0.1, 1.0, 1.0]), "scan")
        widget = module.MFFMTSlicerWidget(types.SimpleNamespace(isEntered=True))
        widget.setup()
        try:
            yield widget, ui, calls, scene, slicer, volume
        finally:
            widget.cleanup()


def _sample() -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "bus_0012-r.png"), sitk.sitkUInt8))[np.newaxis]


def _runTimer(timer, until, timeout_s=300.0):
    deadline = time.monotonic() + timeout_s
    while timer.isActive() and not until():
        assert time.monotonic() < deadline, "the work did not end"
        timer.timeout.emit()
        time.sleep(0.05)


def test_the_panel_binds_its_widgets_to_the_presenter(panel, tmp_path):
    widget, ui, calls, scene, slicer, volume = panel
    assert calls["connectGui"] == [ui]  # the parameter node is bound to the widgets
    assert ui.applyButton.enabled and ui.applyButton.text == "Apply"
    assert ui.modelComboBox.items[0][0].startswith("Default model") and ui.modelComboBox.currentIndex == 0
    assert not ui.progressBar.visible and not ui.backboneComboBox.enabled  # fine-tuning keeps the backbone
    widget.enter()
    widget.presenter.warmUp.result(timeout=300)  # entering the module started the worker

    # Apply: the button becomes Cancel, the poll timer runs until the result is shown.
    ui.applyButton.emit("clicked", False)
    assert ui.applyButton.text == "Cancel" and widget._pollTimer.isActive() and ui.progressBar.visible
    _runTimer(widget._pollTimer, lambda: False)
    assert ui.applyButton.text == "Apply" and not ui.progressBar.visible
    assert ui.statusLabel.text.split()[0] in ("Benign", "Malignant") and calls["layers"][-1] is volume
    # The threshold slider redraws through its timer, without the network.
    ui.thresholdSlider.emit("valueChanged", 0.3)
    assert widget._thresholdTimer.isActive()
    widget.presenter.parameters.threshold = 0.3
    widget._thresholdTimer.timeout.emit()
    assert widget.presenter.parameters.result.GetAttribute("MFFMT.threshold") == "0.3"

    # Models: add a file through the dialog; it is listed and selected; the folder opens.
    calls["file"] += ["", str(widget.logic.defaultModelPath())]
    ui.addModelButton.emit("clicked", False)  # dialog cancelled
    ui.addModelButton.emit("clicked", False)
    assert ui.modelComboBox.count == 2 and ui.modelComboBox.currentIndex == 1
    assert ui.modelComboBox.items[1][2] and "Backbone: resnet18" in ui.modelComboBox.items[1][2]
    ui.modelComboBox.emit("currentIndexChanged", 0)
    assert widget.presenter.currentModel() == str(widget.logic.defaultModelPath())
    ui.openModelsFolderButton.emit("clicked", False)
    assert calls["openUrl"] == [str(tmp_path / "models")]

    # Retrain: the scene list's label chooser, and a start without data is refused with a message.
    ui.refreshSceneDataButton.emit("clicked", False)
    assert ui.sceneDataTable.cells[0, 0] == "scan"
    ui.sceneDataTable.cells[0, 2].currentTextChanged.emit("benign")
    assert widget.logic.trainingLabel(volume) == "benign"
    ui.trainButton.emit("clicked", False)
    assert "No training data" in calls["error"][-1]

    # Live: the live timer drives it; Stop live stops it.
    ui.liveButton.emit("clicked", False)
    assert ui.liveButton.text == "Stop live" and widget._liveTimer.isActive()
    slicer.util.updateVolumeFromArray(volume, _sample()[:, :, ::-1].copy())  # a new frame arrives
    _runTimer(widget._liveTimer, lambda: widget.logic.live.processed >= 1, timeout_s=60)
    assert "segmented" in ui.liveCountsLabel.text
    ui.liveButton.emit("clicked", False)
    assert ui.liveButton.text == "Start live" and not widget._liveTimer.isActive()

    # Leaving the module unbinds the widgets; closing the scene empties the plot and comes back.
    widget.exit()
    assert calls["connectGui"] and len(calls["disconnectGui"]) == len(calls["connectGui"])
    widget.onSceneStartClose(scene, None)
    assert calls["plot"][-1] is None and not ui.applyButton.enabled
    widget.onSceneEndClose(scene, None)
    assert widget.presenter.parameters is not None
