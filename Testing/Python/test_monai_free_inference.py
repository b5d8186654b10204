"""Predicting without MONAI: our ResNet backbone and Grad-CAM against MONAI's, and a process that
loads a model and predicts with ``monai`` never imported (its package import costs about 2 s)."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from MFFMTCore.inference.gradcam import GradCamExplainer
from MFFMTCore.model_file import load_model
from MFFMTCore.network.backbone import BACKBONE_LAYOUTS, make_backbone

REPO = Path(__file__).resolve().parents[2]


def monai_resnet(name: str, in_channels: int = 1) -> nn.Module:
    """MONAI's ResNet as MFFMTCore configured it up to the MONAI-free backbone."""
    from monai.networks.nets import ResNet

    block, layers, _ = BACKBONE_LAYOUTS[name]
    return ResNet(block=block, layers=layers, block_inplanes=[64, 128, 256, 512], spatial_dims=2,
                  n_input_channels=in_channels, conv1_t_stride=2, shortcut_type="B", bias_downsample=False,
                  feed_forward=False)


class MonaiFeatures(nn.Module):
    """MONAI's ResNet returning F1..F4 as our backbone does (its own forward pools them away)."""

    def __init__(self, resnet: nn.Module) -> None:
        super().__init__()
        self.resnet = resnet

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        r = self.resnet
        x = r.maxpool(r.act(r.bn1(r.conv1(x))))
        features = []
        for layer in (r.layer1, r.layer2, r.layer3, r.layer4):
            x = layer(x)
            features.append(x)
        return tuple(features)


def _randomise(state: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random weights and batch-norm statistics (positive variances) for every tensor of ``state``."""
    generator = torch.Generator().manual_seed(seed)
    randomised = {}
    for key, value in state.items():
        if not value.is_floating_point():
            randomised[key] = value.clone()
        elif key.endswith("running_var"):
            randomised[key] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            randomised[key] = torch.randn(value.shape, generator=generator) * 0.1
    return randomised


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_our_backbone_is_monais_resnet(name: str) -> None:
    ours, theirs = make_backbone(name), MonaiFeatures(monai_resnet(name))
    # Same parameter names, and the same random initialisation from the same seed.
    torch.manual_seed(7)
    fresh_theirs = monai_resnet(name).state_dict()
    torch.manual_seed(7)
    fresh_ours = make_backbone(name).state_dict()
    assert list(fresh_ours) == list(fresh_theirs)
    assert all(torch.equal(fresh_ours[key], fresh_theirs[key]) for key in fresh_ours)
    # Same random weights in both: the same features, in evaluation and in training mode.
    weights = _randomise(fresh_ours, seed=1)
    ours.load_state_dict(weights)
    theirs.resnet.load_state_dict(weights)
    x = torch.rand(2, 1, 96, 64)
    for train in (False, True):
        ours.train(train)
        theirs.train(train)
        with torch.no_grad():
            for mine, reference in zip(ours(x), theirs(x), strict=True):
                assert torch.equal(mine, reference)


def test_the_shipped_model_loads_unchanged_and_answers_as_with_monais_backbone(default_model) -> None:
    # load_model recomputes the checksum over weights and metadata and refuses a mismatch.
    model, _ = load_model(default_model)
    reference = copy.deepcopy(model)
    resnet = monai_resnet(model.architecture["backbone"], model.architecture["in_channels"])
    resnet.load_state_dict(model.backbone.state_dict())
    reference.backbone = MonaiFeatures(resnet).eval()
    x = torch.rand(2, 1, 256, 256, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        ours, theirs = model(x), reference(x)
    assert torch.equal(ours.class_logits, theirs.class_logits)
    assert torch.equal(ours.mask_logits, theirs.mask_logits)


def test_gradcam_equals_monais_on_the_shipped_model(default_model) -> None:
    from monai.visualize import GradCAM

    from MFFMTCore.inference.gradcam import _scale_to_unit

    model, info = load_model(default_model)

    class ClassLogits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = copy.deepcopy(model)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.model(x).class_logits

    malignant = len(info.class_names) - 1
    reference = GradCAM(nn_module=ClassLogits().eval(), target_layers=f"model.{model.gradcam_layer}",
                        upsampler=lambda size: (lambda maps: maps), postprocessing=_scale_to_unit)
    x = torch.rand(3, 1, 256, 256, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():  # as the predictor calls it
        ours = GradCamExplainer(model, malignant)(x)
    with torch.enable_grad():
        theirs = reference(x.clone(), class_idx=malignant).detach()
    assert ours.shape == theirs.shape == (3, 1, 8, 8)
    assert ours.amax() == 1.0
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


PREDICT_WITHOUT_MONAI = """
import json, sys
import numpy as np
from MFFMTCore.inference import Predictor
import MFFMTCore.commands.live, MFFMTCore.commands.serve, MFFMTCore.serving.worker  # what live and serve run
result = Predictor().predict(sys.argv[1], gradcam=True)
assert result.gradcam is not None and np.isfinite(result.gradcam).all()
print(json.dumps({"p": result.frames[0].p_malignant, "monai": sorted(m for m in sys.modules if m.startswith("monai"))}))
"""


def test_predicting_never_imports_monai(sample_frames) -> None:
    result = subprocess.run([sys.executable, "-c", PREDICT_WITHOUT_MONAI, str(sample_frames[0])],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert 0.0 <= answer["p"] <= 1.0
    assert answer["monai"] == []


def test_mffmt_predict_never_imports_monai(tmp_path, sample_frames) -> None:
    code = ("import sys\nfrom MFFMTCore.cli import main\n"
            f"status = main(['predict', {str(sample_frames[0])!r}, '--output', {str(tmp_path / 'out')!r}, "
            "'--gradcam', '--progress', 'none'])\n"
            "print(status, sorted(m for m in sys.modules if m.startswith('monai')))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "0 []"
    assert (tmp_path / "out" / "results.csv").is_file()
