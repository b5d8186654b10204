"""The Slicer module's device list and threshold range come from MFFMTCore's one rule, on Slicer's core
libraries: every device is offered without torch in Slicer's process, and one this computer lacks is
refused by the worker in one line that the logic passes on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from MFFMTCore.base.devices import DEVICE_LABELS
from MFFMTCore.base.thresholds import SLIDER_RANGE

SAMPLES = Path(__file__).resolve().parents[2] / "MFFMTCore" / "samples"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def env(tmp_path_factory, slicer_core_session):
    root = tmp_path_factory.mktemp("slicercore-devices")
    with slicer_core_session(root) as (scene, slicer, module, logic):
        yield scene, slicer, logic


def test_the_panel_offers_every_device_automatic_first_and_the_rules_threshold_range(env):
    _, _, logic = env
    parameters = logic.getParameterNode()
    assert parameters.device == "Automatic"
    for label in DEVICE_LABELS:
        parameters.device = label
        assert parameters.device == label
    with pytest.raises(ValueError):
        parameters.device = "TPU"
    low, high = SLIDER_RANGE
    parameters.threshold = low
    parameters.threshold = high
    for outside in (low / 2, (1 + high) / 2):
        with pytest.raises(ValueError):
            parameters.threshold = outside
    parameters.device, parameters.threshold = "Automatic", 0.5


def test_an_absent_gpu_is_one_line_from_the_worker(env):
    scene, slicer, logic = env
    import torch

    absent = [label for label, device in DEVICE_LABELS.items() if device == "cuda" and not torch.cuda.is_available()]
    if not absent:
        pytest.skip("this computer has CUDA")
    image = sitk.GetArrayFromImage(sitk.ReadImage(str(SAMPLES / "bus_0012-r.png")))
    volume = slicer.util.addVolumeFromArray(image[np.newaxis], np.diag([-1.0, -1.0, 1.0, 1.0]), "device test")
    before = scene.GetNumberOfNodes()
    with pytest.raises(RuntimeError) as refused:
        logic.process(volume, threshold=0.5, device=absent[0])
    message = str(refused.value)
    assert "--device cuda: this computer has no NVIDIA GPU (CUDA) that torch can use" in message
    assert "exited with status" not in message and "\n" not in message
    assert scene.GetNumberOfNodes() == before  # nothing half-made is left
    scene.RemoveNode(volume)


def test_training_on_an_absent_gpu_is_one_line_and_leaves_nothing(env):
    _, _, logic = env
    import torch

    if torch.cuda.is_available():
        pytest.skip("this computer has CUDA")
    with pytest.raises(RuntimeError) as refused:
        logic.train([SAMPLES / "samples.csv"], modelName="no gpu", epochs=1, input_size=64, device="GPU")
    message = str(refused.value)  # the child's own line, not "mffmt train failed (exit status 2): ..."
    assert message.startswith("--device cuda: this computer has no NVIDIA GPU (CUDA) that torch can use; choose")
    assert "\n" not in message
    assert not (logic.modelsFolder / "no_gpu.safetensors").exists() and list(logic.workRoot.iterdir()) == []

