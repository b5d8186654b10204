"""Deployment export: TorchScript and ONNX give PyTorch's outputs; `mffmt export` checks and writes atomically."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from MFFMTCore.cli import main
from MFFMTCore.model_file import ModelInfo, save_model
from MFFMTCore.network import MFFMT
from MFFMTCore.network.export import MFFMTExportWrapper, export_model, run_exported


@pytest.fixture(scope="module")
def model() -> MFFMT:
    torch.manual_seed(0)
    network = MFFMT(aux_classes={"birads": 4}).train()
    network(torch.rand(2, 1, 64, 64))  # non-trivial BN statistics
    return network.eval()


@pytest.mark.parametrize(("export_format", "suffix"), [("torchscript", ".pt"), ("onnx", ".onnx")])
def test_export_gives_the_same_outputs(model: MFFMT, tmp_path, export_format: str, suffix: str) -> None:
    path = export_model(model, tmp_path / f"model{suffix}", export_format, input_size=(64, 64))
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary left behind
    # Another batch size and another (non-square) size than the traced example.
    image = torch.rand(2, 1, 96, 64)
    with torch.no_grad():
        expected = [t.numpy() for t in MFFMTExportWrapper(model)(image)]
    exported = run_exported(path, export_format, image)
    assert [a.shape for a in exported] == [(2, 2), (2, 1, 96, 64), (2, 1, 3, 2), (2, 4)]
    for actual, reference in zip(exported, expected):
        np.testing.assert_allclose(actual, reference, rtol=1e-4, atol=1e-5)


def test_export_command(model: MFFMT, tmp_path, capsys) -> None:
    model_path = save_model(tmp_path / "model.safetensors", model,
                            ModelInfo(architecture=model.architecture, input_size=[64, 64]))
    output = tmp_path / "out" / "model.onnx"
    assert main(["export", "--model", str(model_path), "--output", str(output)]) == 0
    assert output.is_file()
    printed = capsys.readouterr().out
    assert "onnx" in printed and "max abs difference" in printed
    assert main(["export", "--model", str(model_path), "--output", str(output), "--input-size", "70"]) == 2
    assert "multiple of 32" in capsys.readouterr().err
    assert main(["export", "--model", str(tmp_path / "none.safetensors"), "--output", str(output)]) == 2
    assert "none.safetensors" in capsys.readouterr().err
