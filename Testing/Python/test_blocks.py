"""MFFMT building blocks against hand computations (paper eqs. 2-9, 16-26) and their shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from MFFMTCore.network import (
    CBAM,
    CFEFM,
    CLEP,
    DFFM,
    ChannelAttention,
    CoordinateAttention,
    FactorisedCrossAttention,
    SpatialAttention,
    backbone_features,
    load_torchvision_weights,
    make_backbone,
)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _identity_batchnorm(norm: nn.BatchNorm2d) -> float:
    """Put a BN in eval mode with statistics (0, 1); return the factor it multiplies by."""
    norm.eval()
    return 1.0 / np.sqrt(1.0 + norm.eps)


def test_coordinate_attention_with_zero_weights_halves_twice() -> None:
    block = CoordinateAttention(4)
    nn.init.zeros_(block.conv_h.weight), nn.init.zeros_(block.conv_h.bias)
    nn.init.zeros_(block.conv_w.weight), nn.init.zeros_(block.conv_w.bias)
    x = torch.randn(2, 4, 3, 5)
    # sigmoid(0) = 0.5 along H and along W: y = x / 4 (eq. 7).
    torch.testing.assert_close(block(x), x / 4)


def test_coordinate_attention_matches_hand_computation() -> None:
    torch.manual_seed(0)
    block = CoordinateAttention(2, min_channels=1).eval()  # mip = 1
    bn_scale = _identity_batchnorm(block.norm)
    with torch.no_grad():
        block.conv.weight.copy_(torch.tensor([0.5, -1.0]).reshape(1, 2, 1, 1))
        block.conv.bias.fill_(0.25)
        block.conv_h.weight.copy_(torch.tensor([1.0, 2.0]).reshape(2, 1, 1, 1))
        block.conv_h.bias.copy_(torch.tensor([0.0, -1.0]))
        block.conv_w.weight.copy_(torch.tensor([-1.0, 0.5]).reshape(2, 1, 1, 1))
        block.conv_w.bias.copy_(torch.tensor([0.5, 0.0]))
    x = np.array([[[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], [[0.0, -1.0, 1.0], [2.0, 0.0, -2.0]]])  # (C=2, H=2, W=3)

    def hswish(v: np.ndarray) -> np.ndarray:
        return v * np.clip(v + 3.0, 0.0, 6.0) / 6.0

    zeta_h = x.mean(axis=2)  # (C, H), eq. 2
    zeta_w = x.mean(axis=1)  # (C, W), eq. 3
    f_h = hswish((0.5 * zeta_h[0] - 1.0 * zeta_h[1] + 0.25) * bn_scale)  # (H,), eq. 4
    f_w = hswish((0.5 * zeta_w[0] - 1.0 * zeta_w[1] + 0.25) * bn_scale)  # (W,)
    g_h = _sigmoid(np.stack([1.0 * f_h + 0.0, 2.0 * f_h - 1.0]))  # (C, H), eq. 5
    g_w = _sigmoid(np.stack([-1.0 * f_w + 0.5, 0.5 * f_w + 0.0]))  # (C, W), eq. 6
    expected = x * g_h[:, :, None] * g_w[:, None, :]  # eq. 7
    result = block(torch.tensor(x, dtype=torch.float32)[None])[0]
    np.testing.assert_allclose(result.detach().numpy(), expected, rtol=1e-5, atol=1e-6)


def test_channel_attention_matches_hand_computation() -> None:
    block = ChannelAttention(2, reduction=2, min_hidden=1)  # hidden width 1
    with torch.no_grad():
        block.mlp[0].weight.copy_(torch.tensor([[1.0, -1.0]]))
        block.mlp[0].bias.fill_(0.0)
        block.mlp[2].weight.copy_(torch.tensor([[2.0], [-1.0]]))
        block.mlp[2].bias.copy_(torch.tensor([0.0, 1.0]))
    x = torch.tensor([[[[1.0, 3.0]], [[0.0, -2.0]]]])  # (1, 2, 1, 2)
    # avg = (2, -1) -> hidden relu(3) = 3; max = (3, 0) -> hidden 3; MLP(.) = (6, -3 + 1) for both; sum (12, -4).
    gate = torch.sigmoid(torch.tensor([12.0, -4.0]))
    torch.testing.assert_close(block(x), x * gate[None, :, None, None])  # eq. 8


def test_spatial_attention_matches_hand_computation() -> None:
    block = SpatialAttention(kernel_size=3)
    bn_scale = _identity_batchnorm(block.norm)
    with torch.no_grad():
        block.conv.weight.zero_()
        block.conv.weight[0, 0, 1, 1] = 1.0  # the max map, centre tap
        block.conv.weight[0, 1, 1, 1] = -2.0  # the mean map, centre tap
    x = torch.tensor([[[[1.0, -1.0], [0.0, 4.0]], [[3.0, 1.0], [-2.0, 0.0]]]])  # (1, 2, 2, 2)
    channel_max = torch.tensor([[3.0, 1.0], [0.0, 4.0]])
    channel_mean = torch.tensor([[2.0, 0.0], [-1.0, 2.0]])
    gate = torch.sigmoid((channel_max - 2.0 * channel_mean) * bn_scale)  # eq. 9
    torch.testing.assert_close(block(x), x * gate)


def test_cbam_is_channel_then_spatial() -> None:
    block = CBAM(32).eval()
    x = torch.randn(2, 32, 6, 5)
    torch.testing.assert_close(block(x), block.spatial(block.channel(x)))


def test_factorised_attention_matches_explicit_formula() -> None:
    torch.manual_seed(1)
    attention = FactorisedCrossAttention(8, num_heads=2)
    q_src, k_src, v_src = torch.randn(3, 1, 5, 8).unbind(0)
    common, value = attention(q_src, k_src, v_src)
    q = attention.query(q_src)[0].detach().numpy()
    k = attention.key(k_src)[0].detach().numpy()
    v = attention.value(v_src)[0].detach().numpy()
    expected = np.zeros((5, 8))
    for head in range(2):
        part = slice(4 * head, 4 * head + 4)
        k_soft = np.exp(k[:, part]) / np.exp(k[:, part]).sum(axis=0, keepdims=True)  # softmax over tokens
        expected[:, part] = q[:, part] @ (k_soft.T @ v[:, part]) / np.sqrt(4)  # eq. 20
    np.testing.assert_allclose(common[0].detach().numpy(), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(value[0].detach().numpy(), v, rtol=1e-6)


def test_dffm_and_cfefm_follow_their_equations() -> None:
    torch.manual_seed(2)
    loc, f4 = torch.randn(2, 2, 6, 16).unbind(0)
    dffm, cfefm = DFFM(16, num_heads=4), CFEFM(16, num_heads=4)
    common, value = dffm.attention(loc, f4, f4)
    added = dffm.project(value - common) + loc  # eqs. 21-22
    expected = added + dffm.mlp.mlp(dffm.mlp.norm(added))  # eq. 23
    torch.testing.assert_close(dffm(loc, f4), expected)
    common, _ = cfefm.attention(expected, loc, loc)
    added = cfefm.project(common) + expected  # eq. 25
    torch.testing.assert_close(cfefm(expected, loc), added + cfefm.mlp.mlp(cfefm.mlp.norm(added)))  # eq. 26


@pytest.mark.parametrize(("use_ca", "use_cbam"), [(True, True), (False, True), (True, False), (False, False)])
def test_clep_gathers_levels_on_the_f4_grid(use_ca: bool, use_cbam: bool) -> None:
    channels = (8, 16, 32, 64)
    clep = CLEP(channels, use_ca=use_ca, use_cbam=use_cbam)
    features = [torch.randn(2, c, 4 * s, 3 * s) for c, s in zip(channels, (8, 4, 2, 1))]
    enhanced, f_loc, coarse = clep(features)
    assert [e.shape for e in enhanced] == [f.shape for f in features]
    assert f_loc.shape == features[-1].shape  # 4 levels x C(F2) = C(F4)
    assert coarse.shape == (2, 1, 4, 3)
    assert isinstance(clep.enhance[0][0], CoordinateAttention) == use_ca
    assert isinstance(clep.enhance[0][1], CBAM) == use_cbam


def test_clep_pooling_is_area_average() -> None:
    clep = CLEP((4, 4), scales=(2, 1), use_ca=False, use_cbam=False).eval()
    with torch.no_grad():
        for compress in clep.compress:
            compress[0].weight.copy_(torch.eye(4).reshape(4, 4, 1, 1))
    fine = torch.rand(1, 4, 4, 6)
    _, f_loc, _ = clep([fine, torch.rand(1, 4, 2, 3)])
    bn_scale = 1.0 / np.sqrt(1.0 + 1e-5)
    torch.testing.assert_close(f_loc[:, :4], nn.functional.adaptive_avg_pool2d(fine * bn_scale, (2, 3)))


@pytest.mark.parametrize(("name", "channels", "parameters"), [
    ("resnet18", (64, 128, 256, 512), 11_170_240),  # torchvision's resnet18 less fc, grey stem
    ("resnet50", (256, 512, 1024, 2048), 23_501_760),  # torchvision's resnet50 less fc, grey stem
])
def test_backbone_is_the_imagenet_layout(name: str, channels: tuple[int, ...], parameters: int) -> None:
    backbone = make_backbone(name, in_channels=1)
    assert sum(p.numel() for p in backbone.parameters()) == parameters
    features = backbone_features(backbone.eval(), torch.rand(1, 1, 64, 96))
    assert [tuple(f.shape[1:]) for f in features] == [(c, 16 // s, 24 // s) for c, s in zip(channels, (1, 2, 4, 8))]


def test_torchvision_weights_load_into_a_grey_backbone(tmp_path) -> None:
    rgb = make_backbone("resnet18", in_channels=3).eval()
    state = {**rgb.state_dict(), "fc.weight": torch.randn(1000, 512), "fc.bias": torch.zeros(1000)}
    path = tmp_path / "resnet18-imagenet.pth"
    torch.save(state, path)
    grey = make_backbone("resnet18", in_channels=1).eval()
    assert load_torchvision_weights(grey, path) == ["fc.bias", "fc.weight"]
    image = torch.rand(1, 1, 64, 64)
    # The summed stem on grey equals the RGB stem on the grey image copied to three channels.
    torch.testing.assert_close(backbone_features(grey, image)[-1], backbone_features(rgb, image.repeat(1, 3, 1, 1))[-1])


def test_torchvision_weights_errors_name_the_file(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_torchvision_weights(make_backbone(), tmp_path / "missing.pth")
    wrong = tmp_path / "resnet50.pth"
    torch.save(make_backbone("resnet50").state_dict(), wrong)
    with pytest.raises(ValueError, match="resnet50.pth.*does not fit"):
        load_torchvision_weights(make_backbone("resnet18"), wrong)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="junk.pth"):
        load_torchvision_weights(make_backbone(), junk)
