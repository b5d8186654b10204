"""The panel's decisions (MFFMTSlicerLib.slicer_presenter) on Slicer's core libraries (``slicer-core``).

The presenter is what the panel does, without Qt: these tests press its buttons (``apply``, ``train``,
``toggleLive``...) as the widget's signals do, with a recording view in place of Qt's widgets and
dialogs, against the real logic, scene, warm ``mffmt serve`` worker and ``mffmt train`` processes.
Where a test is about what the panel sends or shows for an outcome (a failed run, a finished
training), the logic's start is replaced by a recorder or the outcome is a task in that state.
"""

from __future__ import annotations

import shutil
import time
import types
from pathlib import Path

import numpy as np
import pytest
from test_slicer_core_module import _pictureVolume

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "MFFMTCore" / "samples"

pytestmark = pytest.mark.slow


class RecordingView:
    """The panel as the presenter sees it: records what it is told and answers questions from ``answers``."""

    def __init__(self):
        self.states, self.errors, self.questions, self.volumes, self.plots = [], [], [], [], []
        self.answers: list[bool] = []

    def render(self, state):
        self.states.append(state)

    def confirm(self, text, title):
        self.questions.append(text)
        return self.answers.pop(0) if self.answers else True

    def showError(self, text):
        self.errors.append(text)

    def showVolume(self, volumeNode, fit):
        self.volumes.append(volumeNode)

    def showPlot(self, plotViewNode):
        self.plots.append(plotViewNode)

    @property
    def state(self):
        return self.states[-1]


@pytest.fixture(scope="module")
def env(tmp_path_factory, slicer_core_session):
    root = tmp_path_factory.mktemp("slicercore-presenter")
    with slicer_core_session(root) as (scene, slicer, _, logic):
        yield scene, slicer, logic, root


@pytest.fixture
def panel(env):
    """A presenter on an empty scene (the logic, its worker and its models folder are the file's)."""
    from MFFMTSlicerLib.slicer_presenter import MFFMTSlicerPresenter

    scene, slicer, logic, _ = env
    logic.stopLive()
    scene.Clear(0)
    view = RecordingView()
    presenter = MFFMTSlicerPresenter(logic, view)
    yield presenter, view, scene, slicer, logic
    for task in (presenter.predictionTask, presenter.trainingTask):
        if task is not None and not task.finished:
            task.cancel()


def _waitForWork(presenter, timeout_s=300.0):
    """Poll as the panel's timer does until the state says nothing runs."""
    deadline = time.monotonic() + timeout_s
    while presenter.state().polling:
        assert time.monotonic() < deadline, "the work did not end"
        presenter.pollTasks()
        time.sleep(0.05)


def _recordStart(logic, monkeypatch, name):
    """Replace the logic's ``name`` (startProcessing, startTraining) by a recorder of its call."""
    calls = []

    def start(*args, **kwargs):
        calls.append((args, kwargs))
        return types.SimpleNamespace(status="running", finished=False, cancelRequestedAt=None, runDir=Path("run"),
                                     poll=lambda: None, cancel=lambda: None)

    monkeypatch.setattr(logic, name, start)
    return calls


def test_enter_starts_the_worker_so_the_first_apply_starts_none(panel):
    presenter, view, scene, slicer, logic = panel
    logic.closeWorker()
    starts = logic.worker.starts
    volume = _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
    presenter.enter()
    assert presenter.parameters.inputNode is volume  # the scene's first image
    assert presenter.currentModel() == str(logic.defaultModelPath())  # the default model, selected
    assert view.state.apply.enabled and view.state.apply.text == "Apply"
    presenter.warmUp.result(timeout=300)  # started on a helper thread while the user looks at the panel
    assert logic.worker.starts == starts + 1
    started = time.monotonic()
    presenter.apply()
    assert view.state.apply.text == "Cancel" and view.state.status == "Starting..." and view.state.polling
    _waitForWork(presenter)
    print(f"first Apply after entering the module: {time.monotonic() - started:.2f} s (worker already warm)")
    assert logic.worker.starts == starts + 1  # Apply found the worker ready
    state = view.state
    assert state.apply.text == "Apply" and state.progress is None and not state.polling
    assert presenter.parameters.result is not None
    assert state.status.split()[0] in ("Benign", "Malignant") and "pixels" in state.status  # a PNG: no mm
    assert view.volumes[-1] is volume and not view.errors


def test_buttons_follow_the_input_the_model_and_the_retraining_mode(panel):
    from MFFMTSlicerLib.slicer_training import FINE_TUNE, FROM_SCRATCH, SUGGESTED_LEARNING_RATE

    presenter, view, scene, slicer, logic = panel
    presenter.initializeParameterNode()
    parameters = presenter.parameters
    parameters.inputNode = None
    presenter.parametersChanged()
    assert not view.state.apply.enabled and "Choose an input" in view.state.apply.toolTip
    assert not view.state.live.enabled and view.state.train.enabled and view.state.train.text == "Train"
    parameters.inputNode = _pictureVolume(slicer, SAMPLES / "bus_0014-s.png")
    presenter.parametersChanged()
    assert view.state.apply.enabled and view.state.live.enabled and view.state.liveRecordEnabled
    presenter.selectModel("")
    assert not view.state.apply.enabled and "No model yet" in view.state.modelInfo
    presenter.refreshModels()
    assert view.state.modelIndex == 0 and view.state.models[0].title.startswith("Default model")
    # Fine-tuning keeps the model's backbone; from scratch the backbone is chosen, with a scratch rate.
    parameters.startFrom, parameters.lr = FINE_TUNE, SUGGESTED_LEARNING_RATE[FINE_TUNE]
    presenter.parametersChanged()
    assert not view.state.backboneEnabled
    parameters.startFrom = FROM_SCRATCH
    presenter.parametersChanged()
    assert view.state.backboneEnabled and parameters.lr == SUGGESTED_LEARNING_RATE[FROM_SCRATCH]
    parameters.startFrom = FINE_TUNE
    presenter.parametersChanged()
    assert parameters.lr == SUGGESTED_LEARNING_RATE[FINE_TUNE]


def test_apply_sends_the_panels_settings_and_the_whole_sequence_when_asked(panel, monkeypatch):
    presenter, view, scene, slicer, logic = panel
    calls = _recordStart(logic, monkeypatch, "startProcessing")
    presenter.initializeParameterNode()
    parameters = presenter.parameters
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "sweep")
    for index in range(3):
        node = slicer.vtkMRMLScalarVolumeNode()
        slicer.util.updateVolumeFromArray(node, np.full((1, 32, 48), index, np.uint8))
        sequence.SetDataNodeAtValue(node, str(index))
    browser = scene.AddNewNodeByClass("vtkMRMLSequenceBrowserNode", "sweep browser")
    browser.SetAndObserveMasterSequenceNodeID(sequence.GetID())
    slicer.modules.sequences.logic().UpdateProxyNodesFromSequences(browser)
    proxy = browser.GetProxyNode(sequence)
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    parameters.inputNode, parameters.roiNode, parameters.threshold = proxy, roi, 0.35
    parameters.gradcam, parameters.device = True, "CPU"
    view.answers = [True]
    presenter.apply()
    (args, kwargs), = calls
    assert "frame of the sequence sweep" in view.questions[-1] and "all 3 frames" in view.questions[-1]
    assert args == (sequence,)
    assert kwargs["model"] == presenter.currentModel() and kwargs["threshold"] == 0.35
    assert kwargs["roiNode"] is roi and kwargs["gradcam"] is True and kwargs["device"] == "CPU"
    assert view.state.apply.text == "Cancel" and view.state.progress == 0
    presenter.predictionTask = None
    view.answers = [False]
    presenter.apply()
    assert calls[-1][0] == (proxy,)  # only the frame on screen


def test_a_failed_or_cancelled_run_says_so(panel):
    presenter, view, scene, slicer, logic = panel
    presenter.initializeParameterNode()
    volume = _pictureVolume(slicer, SAMPLES / "bus_0014-s.png")
    presenter.predictionTask = object()
    presenter.predictionCompleted(types.SimpleNamespace(status="cancelled"))
    assert view.state.status == "Cancelled." and view.state.apply.text == "Apply" and not view.errors
    presenter.predictionCompleted(types.SimpleNamespace(status="failed", error="input.nrrd: not an image\n(details)",
                                                        inputVolume=volume))
    assert view.state.status == "Failed: input.nrrd: not an image (details)"
    assert "Segmentation of bus_0014-s failed" in view.errors[-1]
    # A start the logic refuses is shown, and nothing runs.
    presenter.parameters.inputNode = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    presenter.apply()
    assert "Segmentation could not start." in view.errors[-1] and "not an image volume" in view.errors[-1]
    assert presenter.predictionTask is None and not view.state.polling


def test_a_model_the_worker_cannot_load_is_unusable_and_the_previous_model_stays(panel):
    presenter, view, scene, slicer, logic = panel
    damaged = logic.modelsFolder / "damaged.safetensors"
    logic.modelsFolder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(logic.defaultModelPath(), damaged)
    with open(damaged, "r+b") as handle:  # one weight byte: the header still reads, the checksum fails
        handle.seek(-10, 2)
        byte = handle.read(1)
        handle.seek(-10, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    try:
        _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
        presenter.enter()
        presenter.warmUp.result(timeout=300)
        default = presenter.currentModel()
        starts = logic.worker.starts
        listed = {choice.path: choice for choice in view.state.models}
        assert listed[str(damaged)].usable  # a header read cannot tell: the list hashes no weights
        presenter.selectModel(str(damaged))  # the worker is asked to load it in the background
        with pytest.raises(Exception, match="checksum mismatch"):
            presenter.warmUp.result(timeout=300)
        presenter.apply()
        _waitForWork(presenter)
        assert view.state.status.startswith("Failed: ") and "checksum mismatch" in view.state.status
        assert "\n" not in view.state.status and "checksum mismatch" in view.errors[-1]
        choice = next(choice for choice in view.state.models if choice.path == str(damaged))
        assert not choice.usable and choice.title == "damaged (unusable)" and "checksum mismatch" in choice.description
        assert not view.state.apply.enabled and "checksum mismatch" in view.state.apply.toolTip
        assert logic.worker.ready(default, presenter.parameters.device) is not None and logic.worker.starts == starts  # kept its model
        presenter.selectModel(default)
        presenter.apply()
        _waitForWork(presenter)
        assert view.state.status.split()[0] in ("Benign", "Malignant") and logic.worker.starts == starts
        # A file replaced since it failed is tried again.
        shutil.copyfile(logic.defaultModelPath(), damaged)
        assert next(entry for entry in logic.models() if entry.path == damaged).error is None
    finally:
        damaged.unlink(missing_ok=True)


def test_a_model_that_stops_the_worker_from_starting_is_unusable(panel):
    presenter, view, scene, slicer, logic = panel
    damaged = logic.modelsFolder / "edited.safetensors"
    logic.modelsFolder.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(logic.defaultModelPath(), damaged)
    with open(damaged, "r+b") as handle:
        handle.seek(-10, 2)
        byte = handle.read(1)
        handle.seek(-10, 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    try:
        logic.closeWorker()
        _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
        presenter.initializeParameterNode()
        presenter.selectModel(str(damaged))  # as a scene saved with it selected
        presenter.apply()  # the worker is started with this model, and refuses it
        _waitForWork(presenter)
        assert "checksum mismatch" in view.state.status and logic.worker.pid is None
        choice = next(choice for choice in view.state.models if choice.path == str(damaged))
        assert not choice.usable and not view.state.apply.enabled
    finally:
        damaged.unlink(missing_ok=True)


def test_threshold_comes_from_the_model_and_redraws_the_result(panel, random_model):
    presenter, view, scene, slicer, logic = panel
    from MFFMTSlicerLib.slicer_prediction import THRESHOLD_ATTRIBUTE

    own = random_model(logic.modelsFolder / "own_threshold.safetensors", threshold=0.4)
    try:
        presenter.initializeParameterNode()
        presenter.parameters.result = None
        presenter.refreshModels()
        presenter.selectModel(str(own))
        assert presenter.parameters.threshold == 0.4
        presenter.refreshModels(select=str(logic.defaultModelPath()))
        volume = _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
        segmentation, rows = logic.process(volume, threshold=0.5)
        presenter.parameters.result = segmentation
        presenter.selectModel(str(own))
        assert presenter.parameters.threshold != 0.4  # a result is on screen: the slider does not move it
        presenter.parameters.threshold = 0.3
        presenter.applyThreshold()
        assert float(segmentation.GetAttribute(THRESHOLD_ATTRIBUTE)) == 0.3
        assert view.state.status.split()[0] == rows[0]["prediction"].capitalize()
    finally:
        own.unlink()


def test_train_fine_tunes_the_selected_model_with_the_panels_options(panel, monkeypatch):
    presenter, view, scene, slicer, logic = panel
    from MFFMTSlicerLib.slicer_training import FINE_TUNE

    calls = _recordStart(logic, monkeypatch, "startTraining")
    cancelled = []
    monkeypatch.setattr(logic, "cancelTraining", lambda task: (cancelled.append(task),
                                                               setattr(task, "cancelRequestedAt", 1.0)))
    presenter.initializeParameterNode()
    parameters = presenter.parameters
    parameters.startFrom, parameters.useSceneData = FINE_TUNE, False
    presenter.train(["", ""])
    assert "No training data" in view.errors[-1] and not calls
    presenter.selectModel("")
    presenter.train([str(SAMPLES / "samples.csv")])
    assert "No model to fine-tune" in view.errors[-1] and not calls
    presenter.refreshModels()
    parameters.epochs, parameters.lr, parameters.batchSize, parameters.modelName = 3, 3e-4, 4, "mine"
    presenter.train([str(SAMPLES / "samples.csv"), ""])
    (args, kwargs), = calls
    assert args == ([str(SAMPLES / "samples.csv")],)
    assert kwargs["init_model"] == presenter.currentModel() == str(logic.defaultModelPath())
    assert (kwargs["epochs"], kwargs["lr"], kwargs["batch_size"], kwargs["modelName"]) == (3, 3e-4, 4, "mine")
    assert "lambda_loc" not in kwargs and "backbone" not in kwargs  # left as they were: the parent's recipe
    assert kwargs["sceneItems"] == [] and kwargs["device"] == parameters.device
    assert view.state.train.text == "Cancel training" and view.state.train.enabled and view.state.trainProgress == 0
    assert view.plots and view.plots[-1].IsA("vtkMRMLPlotViewNode")
    presenter.train([])  # Cancel training
    assert cancelled and view.state.trainStatus == "Stopping at the next safe point..."
    assert not view.state.train.enabled  # until it has stopped


def test_training_end_is_reported_and_the_hook_can_report_more(panel, tmp_path):
    presenter, view, scene, slicer, logic = panel
    from MFFMTSlicerLib.slicer_presenter import TrainingReport

    presenter.initializeParameterNode()
    added = logic.addModelFile(logic.defaultModelPath(), "fresh")
    try:
        state = types.SimpleNamespace(summary=lambda: "epoch 3/3, val AUC 0.90")
        done = types.SimpleNamespace(status="done", modelPath=added, state=state, runDir=tmp_path, siteReport=None,
                                     siteReportText=None)
        presenter.trainingCompleted(done)
        assert presenter.currentModel() == str(added)  # the new model is selected
        assert view.state.trainStatus.endswith("New model: fresh.safetensors (selected above).")
        presenter.trainingCompleted(types.SimpleNamespace(status="cancelled", runDir=tmp_path))
        assert view.state.trainStatus.startswith("Cancelled; no model was added") and not view.errors
        presenter.trainingCompleted(types.SimpleNamespace(status="failed", runDir=tmp_path, error="data.csv: empty"))
        assert view.state.trainStatus == "Training failed; no model was added." and "data.csv: empty" in view.errors[-1]
        presenter.trainingReport = lambda task: TrainingReport("On your 12 cases: AUC 0.81", "only 12 cases")
        presenter.trainingCompleted(done)
        assert (view.state.trainStatus, view.state.trainWarning) == ("On your 12 cases: AUC 0.81", "only 12 cases")
    finally:
        added.unlink()


def test_training_runs_and_cancels_from_the_panel(panel):
    presenter, view, scene, slicer, logic = panel
    from MFFMTSlicerLib.slicer_training import FROM_SCRATCH

    presenter.initializeParameterNode()
    parameters = presenter.parameters
    parameters.startFrom, parameters.epochs, parameters.batchSize, parameters.modelName = FROM_SCRATCH, 50, 2, "stop"
    listed = [entry.path for entry in logic.models()]
    presenter.train([str(SAMPLES / "samples.csv")])
    task = presenter.trainingTask
    assert task is not None and view.state.polling
    deadline = time.monotonic() + 300
    while task.state.status == "waiting" and not task.finished:
        assert time.monotonic() < deadline
        presenter.pollTasks()
        time.sleep(0.2)
    presenter.train([])  # Cancel training
    _waitForWork(presenter)
    assert task.status == "cancelled" and view.state.trainStatus.startswith("Cancelled;")
    assert view.state.trainProgress is None and view.state.train.text == "Train"
    assert [entry.path for entry in logic.models()] == listed


def test_live_from_the_panel(panel):
    presenter, view, scene, slicer, logic = panel
    presenter.initializeParameterNode()
    image = _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
    frame = slicer.util.arrayFromVolume(image).copy()
    feed = slicer.util.addVolumeFromArray(frame * 0, np.diag([-0.1, -0.1, 1.0, 1.0]), "Image_Reference")
    presenter.parameters.inputNode = feed
    presenter.toggleLive(record=True)
    assert view.state.live.text == "Stop live" and view.state.livePolling and not view.state.liveRecordEnabled
    assert view.volumes[-1] is feed
    slicer.util.updateVolumeFromArray(feed, frame)
    deadline = time.monotonic() + 120
    while logic.live.processed < 1:
        assert time.monotonic() < deadline
        presenter.pollLive()
        time.sleep(0.02)
    assert "this frame:" in view.state.liveClass and "1 segmented" in view.state.liveCounts
    presenter.toggleLive(record=True)  # Stop live
    assert view.state.live.text == "Start live" and not view.state.livePolling
    assert "recorded in" in view.state.liveCounts


def test_scene_close_stops_a_running_segmentation_and_comes_back(panel):
    presenter, view, scene, slicer, logic = panel
    _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
    presenter.initializeParameterNode()
    presenter.apply()
    task = presenter.predictionTask
    presenter.sceneStartClose()
    assert task.status == "cancelled" and not task.workDir.exists()
    assert presenter.parameters is None and not view.state.apply.enabled and not view.state.train.enabled
    assert view.plots[-1] is None
    presenter.sceneEndClose(entered=False)
    assert presenter.parameters is None
    scene.Clear(0)  # the new scene's parameter node has no model yet: the default one is selected again
    presenter.parameters = None
    logic.getParameterNode().modelPath = ""
    presenter.sceneEndClose(entered=True)
    assert presenter.currentModel() == str(logic.defaultModelPath()) and view.state.modelIndex == 0


def test_missing_packages_are_offered_before_anything_runs(panel, monkeypatch):
    presenter, view, scene, slicer, logic = panel
    _pictureVolume(slicer, SAMPLES / "bus_0012-r.png")
    presenter.initializeParameterNode()
    missing = [types.SimpleNamespace(describe=lambda: "torch>=2.2 (not installed)")]
    monkeypatch.setattr(logic, "missingRequirements", lambda: missing)
    installed = []

    def install(statuses):
        installed.append(statuses)
        raise RuntimeError("no network")

    monkeypatch.setattr(logic, "installRequirements", install)
    view.answers = [False]
    presenter.apply()
    assert "torch>=2.2 (not installed)" in view.questions[-1] and not installed and presenter.predictionTask is None
    view.answers = [True]
    presenter.apply()
    assert installed == [missing] and "Installing the Python packages failed." in view.errors[-1]
    assert presenter.predictionTask is None
    presenter.warmUp = None
    presenter.startWorker()  # no worker without its packages
    assert presenter.warmUp is None


def test_model_files_and_scene_data_from_the_panel(panel, tmp_path):
    presenter, view, scene, slicer, logic = panel
    from MFFMTSlicerLib.slicer_presenter import NO_LABEL

    presenter.initializeParameterNode()
    presenter.addModelFile("")  # the file dialog was cancelled
    assert not view.errors
    other = tmp_path / "other.safetensors"
    other.write_bytes(b"\x00" * 16)
    presenter.addModelFile(str(other))
    assert "The model file cannot be added." in view.errors[-1] and "other.safetensors" in view.errors[-1]
    shutil.copyfile(logic.defaultModelPath(), tmp_path / "from a colleague.safetensors")
    presenter.addModelFile(str(tmp_path / "from a colleague.safetensors"))
    try:
        assert Path(presenter.currentModel()).name == "from_a_colleague.safetensors"
        volume = _pictureVolume(slicer, SAMPLES / "bus_0014-s.png")
        assert [(v, label) for v, _, label in presenter.sceneCandidates()] == [(volume, NO_LABEL)]
        presenter.setTrainingLabel(volume, "benign")
        assert presenter.sceneCandidates()[0][2] == "benign" and logic.trainingLabel(volume) == "benign"
        presenter.setTrainingLabel(volume, NO_LABEL)
        assert logic.trainingLabel(volume) is None
    finally:
        Path(presenter.currentModel()).unlink()


def test_cleanup_stops_the_worker(panel):
    presenter, view, scene, slicer, logic = panel
    presenter.initializeParameterNode()
    logic.worker.client()
    assert logic.worker.pid is not None
    presenter.cleanup()
    assert logic.worker.pid is None


def test_the_retrain_tab_shows_the_site_report_and_its_warning(panel):
    """A fine-tuning run that ends with a site report: its figures in the summary, its warning as the warning."""
    from test_model_completion import scores

    from MFFMTCore.evaluation.model_fit import FrameScore
    from MFFMTCore.evaluation.site_report import site_report

    presenter, view, *_ = panel
    good = scores(overconfident=1.0, seed=1)
    bad = [FrameScore(s.group, s.label, s.lesion, -s.logit, s.peak, s.largest_fraction, 0.1 if s.lesion else 1.0)
           for s in good]
    models = {"parent": {"temperature": 1.0, "lesion_decision": {"min_peak": 0.6, "min_area_fraction": 0.01}},
              "new": {"temperature": 1.0, "lesion_decision": {}}}
    task = types.SimpleNamespace(status="done", state=types.SimpleNamespace(summary=lambda: "Epoch 6 of 6."),
                                 modelPath="/models/site.safetensors", siteReport=site_report(good, bad, models, 200),
                                 siteReportText=None)
    report = presenter.trainingReport(task)
    assert "Site report on 12 validation patients" in report.text and "site.safetensors" in report.text
    assert report.warning.startswith("Warning: the new model is not better") and "Warning" not in report.text
    task.siteReport = site_report(bad, good, {"parent": models["new"], "new": models["parent"]}, 200)
    assert presenter.trainingReport(task).warning == ""  # better: no warning
    task.siteReport, task.siteReportText = None, None  # a run from scratch has no site report
    assert presenter.trainingReport(task).text == "Epoch 6 of 6.\nNew model: site.safetensors (selected above)."
