"""Every Python example of README.md and MFFMTSlicer/README.md, run as written.

Each ```python block is taken from the README itself and executed; what it needs from the world is
given as the reader would have it: its data paths are replaced by test data (``SUBSTITUTIONS`` of
each test, every one of which must occur in the block, so a changed example cannot pass unseen),
the scene holds the nodes it names (a markups ROI "R", a "Sequence", an "Image_Reference" feed,
a "Segmentation"), the GPU is the CPU where there is no CUDA, and a blocking ``logic.train`` is
started and cancelled once it runs (the test checks the options reached ``mffmt train``). The
Slicer console examples run on Slicer's core libraries (``slicer-core``), with ``slicer`` in the
namespace as in Slicer's Python console.
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO / "MFFMTCore" / "samples"

pytestmark = pytest.mark.slow


def python_blocks(readme: Path) -> list[str]:
    """The ```python blocks of a Markdown file, in order."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), re.S)


def substituted(code: str, substitutions: dict[str, str]) -> str:
    for old, new in substitutions.items():
        assert old in code, f"the README example no longer contains {old!r}: update this test"
        code = code.replace(old, new)
    return code


def test_every_python_example_is_run_here():
    # README.md: the Predictor, the worker client, the Slicer console; MFFMTSlicer/README.md: the console.
    first_lines = [block.splitlines()[0] for block in python_blocks(REPO / "README.md")]
    assert first_lines == ["from MFFMTCore.inference import Predictor", "from MFFMTCore.serving.client import WorkerClient",
                           "import MFFMTSlicer"]
    assert [block.splitlines()[0] for block in python_blocks(REPO / "MFFMTSlicer" / "README.md")] == ["import MFFMTSlicer"]


def test_readme_predictor_example(monkeypatch, capsys):
    monkeypatch.chdir(REPO)  # the example's path is relative to a checkout
    namespace: dict = {}
    exec(python_blocks(REPO / "README.md")[0], namespace)
    assert namespace["frame"].prediction in ("benign", "malignant") and namespace["result"].frames
    assert capsys.readouterr().out.split()[0] in ("benign", "malignant")


def test_readme_worker_client_example(tmp_path, monkeypatch, model_path):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "scans").mkdir()
    shutil.copy(SAMPLES / "bus_0012-r.png", tmp_path / "scans")
    (tmp_path / "runs" / "mine").mkdir(parents=True)
    shutil.copy(model_path, tmp_path / "runs" / "mine" / "model.safetensors")
    frame = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "bus_0012-r.png"), sitk.sitkUInt8))
    namespace = {"frame": frame, "clip": np.stack([frame] * 3)}
    exec(python_blocks(REPO / "README.md")[1], namespace)
    assert namespace["reply"].rows[0]["prediction"] in ("benign", "malignant")
    assert namespace["reply"].maps["label"].shape == frame.shape
    assert (tmp_path / "results" / "results.csv").is_file()
    assert namespace["worker"].process.poll() is not None  # the with block ended the worker


# --------------------------------------------------------------------------- the Slicer console


@pytest.fixture(scope="module")
def console(tmp_path_factory, slicer_core_session):
    """Slicer's core libraries with the module loadable, as in Slicer's Python console."""
    root = tmp_path_factory.mktemp("readme-console")
    with slicer_core_session(root) as (scene, slicer, _, _):
        yield scene, slicer, root


class _Settings:
    """Application settings with no models folder set (slicer-core has no Qt)."""

    def value(self, key):
        return None


@pytest.fixture
def fresh_console(console, tmp_path, monkeypatch):
    """An empty scene, a home folder of its own (the default models folder is ~/.MFFMTSlicer/models),
    and ``logic.train`` started and cancelled once it runs; yields the trainings it started."""
    import qt
    from MFFMTSlicerLib.slicer_training import TrainingLogic

    scene, slicer, _ = console
    scene.Clear(0)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setattr(qt, "QSettings", _Settings, raising=False)
    started = []

    def startedAndCancelled(self, data=(), modelName="my_model", **options):
        task = self.startTraining(data, modelName, **options)
        started.append(task)
        deadline = time.monotonic() + 300
        while task.state.status == "waiting" and not task.finished:
            assert time.monotonic() < deadline, "training did not start"
            task.poll()
            time.sleep(0.2)
        self.cancelTraining(task)
        task.wait()
        return None

    monkeypatch.setattr(TrainingLogic, "train", startedAndCancelled)
    yield scene, slicer, started


def _nrrdCopy(png: Path, folder: Path) -> Path:
    """A sample image as a file slicer-core reads (it has no PNG reader)."""
    path = folder / f"{png.stem}.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(png), sitk.sitkUInt8), str(path))
    return path


def _run(code: str, slicer) -> dict:
    namespace = {"slicer": slicer}
    try:
        exec(code, namespace)
    finally:
        for logic in {id(value): value for value in namespace.values() if hasattr(value, "closeWorker")}.values():
            logic.stopLive()
            logic.closeWorker()
    return namespace


def _config(task) -> dict:
    """The options a training run was started with (its config.json, written once the run has started)."""
    path = task.runDir / "config.json"
    deadline = time.monotonic() + 300
    while not path.is_file():
        assert not task.finished and time.monotonic() < deadline, f"{path} was not written"
        task.poll()
        time.sleep(0.2)
    return json.loads(path.read_text(encoding="utf-8"))


def test_readme_slicer_console_example(fresh_console, tmp_path):
    scene, slicer, started = fresh_console
    cases = tmp_path / "cases"
    cases.mkdir()
    shutil.copy(SAMPLES / "bus_0379-l.png", cases)
    code = substituted(python_blocks(REPO / "README.md")[2], {
        '"/path/to/image.png"': repr(str(_nrrdCopy(SAMPLES / "bus_0012-r.png", tmp_path))),
        '"/data/cases"': repr(str(cases)), '"/data/cases_results"': repr(str(tmp_path / "cases_results")),
        '["/data/BUS-BRA"]': repr([str(SAMPLES / "samples.csv")])})
    namespace = _run(code, slicer)
    assert namespace["rows"][0]["prediction"] in ("benign", "malignant")
    assert (tmp_path / "cases_results" / "results.csv").is_file()
    assert namespace["task"].status == "cancelled"
    (training,) = started
    assert training.status == "cancelled"  # it ran: the options reached mffmt train and were accepted
    config = _config(training)
    assert config["init_model"] == str(namespace["logic"].defaultModelPath()) and config["epochs"] == 5


def test_readme_slicer_module_console_example(fresh_console, tmp_path):
    scene, slicer, started = fresh_console
    image = _nrrdCopy(SAMPLES / "bus_0012-r.png", tmp_path)
    # The scene the example speaks of: an ROI "R" over the image, a two-frame "Sequence", an
    # OpenIGTLink-fed "Image_Reference" and a lesion "Segmentation" on the image's voxels.
    reference = slicer.util.loadVolume(str(image), {"singleFile": True})
    roi = scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    bounds = [0.0] * 6
    reference.GetRASBounds(bounds)
    roi.SetCenter([(bounds[0] + bounds[1]) / 2, (bounds[2] + bounds[3]) / 2, (bounds[4] + bounds[5]) / 2])
    roi.SetSize([(bounds[1] - bounds[0]) / 2, (bounds[3] - bounds[2]) / 2, 10.0])
    sequence = scene.AddNewNodeByClass("vtkMRMLSequenceNode", "Sequence")
    sequence.SetDataNodeAtValue(reference, "0")
    sequence.SetDataNodeAtValue(reference, "1")
    feed = slicer.util.addVolumeFromArray(slicer.util.arrayFromVolume(reference).copy(),
                                          np.diag([-0.1, -0.1, 1.0, 1.0]), "Image_Reference")
    mask = _nrrdCopy(SAMPLES / "mask_0012-r.png", tmp_path)
    labelmap = slicer.util.loadLabelVolume(str(mask), {"singleFile": True})
    segmentation = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "Segmentation")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmap, segmentation)
    scene.RemoveNode(labelmap)
    new_cases = tmp_path / "new_cases"
    new_cases.mkdir()
    shutil.copy(SAMPLES / "bus_0379-l.png", new_cases)
    model = tmp_path / "model.safetensors"
    shutil.copy(REPO / "MFFMTCore" / "models" / "mffmt18_default.safetensors", model)
    code = substituted(python_blocks(REPO / "MFFMTSlicer" / "README.md")[0], {
        '"/path/to/bus_0012-r.png"': repr(str(image)), '"/path/to/model.safetensors"': repr(str(model)),
        'device="cuda"': 'device="cpu"',  # this machine has no GPU
        '"/data/new_cases"': repr(str(new_cases)), '"/data/new_cases_results"': repr(str(tmp_path / "results")),
        '["/data/busbra"]': repr([str(SAMPLES / "samples.csv")]),
        '["/data/extra.json"]': repr([str(SAMPLES / "samples.csv")])})
    namespace = _run(code, slicer)
    try:
        logic, task = namespace["logic"], namespace["task"]
        assert namespace["segmentation"].GetNodeReference("MFFMT.results") is not None
        assert namespace["rows"] and all(row["prediction"] in ("benign", "malignant") for row in namespace["rows"])
        assert namespace["session"].volumeNode is feed
        assert namespace["session"].processed + namespace["session"].dropped + namespace["session"].failed \
            == namespace["session"].received
        assert (tmp_path / "results" / "results.csv").is_file()
        (training,) = started
        assert training.status == "cancelled"
        config = _config(training)
        assert config["init_model"] == str(logic.defaultModelPath()) and config["epochs"] == 10
        assert config["lr"] == 1e-4
        assert not task.finished  # started in the background, scene volume and datalist exported
        assert (task.runDir / "scene_data").is_dir() and _config(task)["backbone"] == "resnet18"
        logic.cancelTraining(task)  # the example's commented-out lines
        task.wait()
        assert task.status == "cancelled" and task.modelPath is None
    finally:
        if not namespace["task"].finished:
            namespace["task"].cancel()
