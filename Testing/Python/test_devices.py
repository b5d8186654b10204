"""One device rule (MFFMTCore.base.devices): ``auto`` takes CUDA, else MPS, else the CPU; a device
chosen by name and absent is refused in one line by every command, the worker and the Slicer side."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from MFFMTSlicerLib import commands

from MFFMTCore.base.devices import DEVICE_CHOICES, DEVICE_LABELS, choose_device
from MFFMTCore.base.train_options import OPTIONS
from MFFMTCore.cli import build_parser, main
from MFFMTCore.devices import present_devices, torch_device
from MFFMTCore.errors import MFFMTError
from MFFMTCore.resources import sample_datalist
from MFFMTCore.serving.client import WorkerClient, WorkerError

# Devices this computer lacks: the ones a test can choose to be refused.
ABSENT = [device for device in ("cuda", "mps") if device not in present_devices()]


@pytest.mark.parametrize("present, chosen", [
    (("cpu",), "cpu"), (("cpu", "mps"), "mps"), (("cpu", "cuda"), "cuda"), (("cpu", "cuda", "mps"), "cuda"),
])
def test_auto_takes_cuda_then_mps_then_the_cpu(present, chosen):
    assert choose_device("auto", present) == chosen
    assert choose_device("cpu", present) == "cpu"


@pytest.mark.parametrize("requested, what", [("cuda", "NVIDIA GPU"), ("mps", "Apple GPU")])
def test_a_device_chosen_and_absent_is_refused_in_one_line(requested, what):
    with pytest.raises(MFFMTError) as refused:
        choose_device(requested, ("cpu",))
    assert str(refused.value) == (f"--device {requested}: this computer has no {what} ({requested.upper()}) "
                                  "that torch can use; choose auto or one of: cpu")
    with pytest.raises(MFFMTError, match="unknown device 'gpu'; choose one of auto, cpu, cuda, mps"):
        choose_device("gpu", ("cpu",))


def test_the_torch_device_follows_what_torch_has():
    assert torch_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                         "mps" if "mps" in present_devices() else "cpu")
    assert torch_device("cpu") == torch.device("cpu")


def test_every_command_with_a_device_offers_the_same_choices_and_auto_by_default():
    parser = build_parser()
    commands_ = parser._subparsers._group_actions[0].choices
    with_device = {name: sub for name, sub in commands_.items()
                   if any("--device" in action.option_strings for action in sub._actions)}
    assert {"predict", "evaluate", "serve", "live", "fit-input-check", "train"} <= set(with_device)
    for name, sub in with_device.items():
        action = next(action for action in sub._actions if "--device" in action.option_strings)
        default = OPTIONS["device"].default if name == "train" else action.default  # train merges its config
        assert tuple(action.choices) == DEVICE_CHOICES and default == "auto", name


@pytest.mark.skipif(not ABSENT, reason="this computer has both CUDA and MPS")
def test_predict_with_an_absent_device_says_so_in_one_line(sample_frames, model_path, tmp_path):
    device = ABSENT[0]
    done = subprocess.run([sys.executable, "-m", "MFFMTCore", "predict", str(sample_frames[0]), "--output",
                           str(tmp_path / "out"), "--model", str(model_path), "--device", device],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    what = "NVIDIA GPU (CUDA)" if device == "cuda" else "Apple GPU (MPS)"
    assert done.stderr.strip() == (f"mffmt predict: error: --device {device}: this computer has no {what} "
                                   "that torch can use; choose auto or one of: cpu")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not ABSENT, reason="this computer has both CUDA and MPS")
def test_every_other_command_refuses_an_absent_device_in_one_line(model_path, tmp_path, capsys):
    device = ABSENT[0]
    for argv in (["evaluate", "--data", str(sample_datalist()), "--model", str(model_path),
                  "--output", str(tmp_path / "eval"), "--progress", "none"],
                 ["fit-input-check", str(model_path), "--data", str(sample_datalist()),
                  "--output", str(tmp_path / "checked.safetensors"), "--progress", "none"],
                 ["train", "--data", str(sample_datalist()), "--output", str(tmp_path / "run"),
                  "--epochs", "1", "--progress", "none"]):
        assert main(argv + ["--device", device]) == 2, argv[0]
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith(f"mffmt {argv[0]}: error: --device {device}: this computer has no"), lines
        assert "Traceback" not in "\n".join(lines)
    assert not (tmp_path / "checked.safetensors").exists() and not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.skipif(not ABSENT, reason="this computer has both CUDA and MPS")
def test_the_worker_refuses_an_absent_device_with_its_reason(model_path):
    device = ABSENT[0]
    with pytest.raises(WorkerError) as refused:
        WorkerClient(model=model_path, threads=1, device=device)
    message = str(refused.value)
    assert message.startswith(f"the worker did not start: --device {device}: this computer has no")
    assert "exited with status" not in message and "\n" not in message


def test_the_worker_reports_its_device_and_what_is_present(model_path):
    with WorkerClient(model=model_path, threads=1) as worker:
        info = worker.request("info").message
    assert info["device"] == torch_device("auto").type and info["devices"] == list(present_devices())


def test_the_slicer_device_list_is_the_rules():
    assert set(DEVICE_LABELS.values()) == set(DEVICE_CHOICES)
    assert [commands.device_argument(label) for label in DEVICE_LABELS] == ["auto", "cpu", "cuda", "mps"]
    assert commands.device_argument("mps") == "mps" and commands.device_argument("CPU") == "cpu"
    with pytest.raises(ValueError, match="unknown device 'TPU'"):
        commands.device_argument("TPU")
