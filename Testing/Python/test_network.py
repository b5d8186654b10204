"""The MFFMT network: output contract for every switch, gradients, batch independence, model files."""

from __future__ import annotations

import json

import pytest
import torch

from MFFMTCore.losses import MFFMTLoss
from MFFMTCore.model_file import ModelFileError, ModelInfo, load_model, save_model
from MFFMTCore.network import MFFMT, MFFMTOutput

SWITCHES = [
    {},
    {"use_ca": False},
    {"use_cbam": False},
    {"fusion": "sum"},
    {"fusion": "concat"},
    {"decoder": False},
    {"cfefm_kv": "loc"},
    {"aux_classes": {"birads": 4, "lesion": 2}},
]


def _check_output(output: MFFMTOutput, batch: int, height: int, width: int, model: MFFMT) -> None:
    assert isinstance(output, MFFMTOutput)
    assert output.class_logits.shape == (batch, 2)
    assert output.mask_logits.shape == (batch, 1, height, width)
    assert output.coarse_mask_logits.shape == (batch, 1, height // 32, width // 32)
    assert {name: tuple(t.shape) for name, t in output.aux_logits.items()} == {
        name: (batch, count) for name, count in model.architecture["aux_classes"].items()
    }
    assert all(torch.isfinite(t).all() for t in (*output[:3], *output.aux_logits.values()))


@pytest.mark.parametrize("switches", SWITCHES, ids=lambda s: json.dumps(s) if s else "paper")
def test_mffmt18_shapes_for_every_switch(switches: dict) -> None:
    model = MFFMT("resnet18", **switches).eval()
    with torch.no_grad():
        for height, width in ((256, 256), (160, 224)):
            _check_output(model(torch.rand(1, 1, height, width)), 1, height, width, model)


# Every switch once for ResNet50 too, grouped so that fewer large models are built.
SWITCHES_50 = [
    {"use_ca": False, "fusion": "sum"},
    {"use_cbam": False, "fusion": "concat", "decoder": False},
    {"cfefm_kv": "loc", "aux_classes": {"birads": 4}},
]


@pytest.mark.parametrize("switches", SWITCHES_50, ids=json.dumps)
def test_mffmt50_shapes_for_every_switch(switches: dict) -> None:
    model = MFFMT("resnet50", **switches).eval()
    with torch.no_grad():
        _check_output(model(torch.rand(2, 1, 64, 96)), 2, 64, 96, model)


def test_mffmt50_shapes_and_token_projection() -> None:
    model = MFFMT("resnet50").eval()
    with torch.no_grad():
        for height, width in ((256, 256), (160, 224)):
            _check_output(model(torch.rand(1, 1, height, width)), 1, height, width, model)
    # F4 (2048 channels) is projected to 512-wide tokens: the fusion stays far below 100M parameters.
    assert model.fusion.out_features == 512
    assert sum(p.numel() for p in model.fusion.parameters()) < 12_000_000


def test_decoder_off_upsamples_the_coarse_map() -> None:
    model = MFFMT(decoder=False).eval()
    assert model.lesion_decoder is None
    with torch.no_grad():
        output = model(torch.rand(1, 1, 64, 96))
    expected = torch.nn.functional.interpolate(output.coarse_mask_logits, size=(64, 96), mode="bilinear")
    torch.testing.assert_close(output.mask_logits, expected)


def test_input_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        MFFMT()(torch.rand(1, 1, 64, 80))


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="fusion"):
        MFFMT(fusion="add")
    with pytest.raises(ValueError, match="backbone"):
        MFFMT(backbone="resnet34")
    with pytest.raises(ValueError, match="cfefm_kv"):
        MFFMT(cfefm_kv="f4")
    with pytest.raises(ValueError, match="birads"):
        MFFMT(aux_classes={"birads": 0})


def test_architecture_is_json_and_rebuilds_the_same_network() -> None:
    model = MFFMT(fusion="concat", aux_classes={"birads": 4}, use_cbam=False)
    rebuilt = MFFMT(**json.loads(json.dumps(model.architecture)))
    assert rebuilt.architecture == model.architecture
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert model.get_submodule(model.gradcam_layer) is model.backbone.layer4


@pytest.mark.parametrize("switches", [{"aux_classes": {"birads": 4}}, {"decoder": False, "fusion": "concat"}],
                         ids=["paper+aux", "no-decoder-concat"])
def test_every_trainable_parameter_gets_a_gradient(switches: dict) -> None:
    torch.manual_seed(0)
    model = MFFMT(**switches).train()
    mask = torch.zeros(2, 1, 64, 64)
    mask[0, :, 16:40, 20:48] = 1
    target = {"label": torch.tensor([0, 1]), "mask": mask, "has_mask": torch.tensor([True, True]),
              "mask_is_box": torch.tensor([False, False]), "aux": {"birads": torch.tensor([1, 3])}}
    MFFMTLoss().forward(model(torch.rand(2, 1, 64, 64)), target).total.backward()
    without = [name for name, p in model.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    assert without == []
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_eval_outputs_do_not_depend_on_the_batch() -> None:
    model = MFFMT(aux_classes={"birads": 4}).eval()
    images = torch.rand(3, 1, 64, 64)
    with torch.no_grad():
        together = model(images)
        alone = model(images[1:2])
    for batch_part, single in zip((*together[:3], together.aux_logits["birads"]), (*alone[:3], alone.aux_logits["birads"])):
        torch.testing.assert_close(batch_part[1:2], single, rtol=1e-4, atol=1e-5)


def test_model_file_round_trip_and_tampering(tmp_path) -> None:
    torch.manual_seed(0)
    model = MFFMT(aux_classes={"birads": 4}).train()
    model(torch.rand(2, 1, 64, 64))  # move the BN statistics away from their initial values
    model.eval()
    path = save_model(tmp_path / "model.safetensors", model, ModelInfo(architecture=model.architecture))
    loaded, info = load_model(path)
    assert info.architecture == model.architecture
    image = torch.rand(1, 1, 64, 64)
    with torch.no_grad():
        before, after = model(image), loaded(image)
    for expected, actual in zip((*before[:3], before.aux_logits["birads"]), (*after[:3], after.aux_logits["birads"])):
        torch.testing.assert_close(actual, expected, rtol=0, atol=0)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip bits inside the last tensor's bytes
    tampered = tmp_path / "tampered.safetensors"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="tampered.safetensors.*checksum"):
        load_model(tampered)
