"""MFFMTLoss: each term by value, partial labels, and zero (never NaN) when no sample carries a label."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from MFFMTCore.losses import LossParts, MFFMTLoss, soft_dice_loss
from MFFMTCore.network import MFFMTOutput


def _output(batch: int = 3, size: int = 64, aux: bool = True, seed: int = 0) -> MFFMTOutput:
    generator = torch.Generator().manual_seed(seed)
    def tensor(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).mul(2).requires_grad_()

    heads = {"birads": tensor(batch, 4)} if aux else {}
    return MFFMTOutput(tensor(batch, 2), tensor(batch, 1, size, size), tensor(batch, 1, size // 32, size // 32), heads)


def _target(batch: int = 3, size: int = 64) -> dict:
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, 8:40, 16:33] = 1
    return {"label": torch.tensor([1, 0, 1][:batch]), "mask": mask, "has_mask": torch.ones(batch, dtype=torch.bool),
            "mask_is_box": torch.zeros(batch, dtype=torch.bool), "aux": {"birads": torch.tensor([0, 3, 2][:batch])}}


def _select(output: MFFMTOutput, target: dict, keep: list[int]) -> tuple[MFFMTOutput, dict]:
    picked = MFFMTOutput(*(t[keep] for t in output[:3]), {k: v[keep] for k, v in output.aux_logits.items()})
    return picked, {k: ({n: a[keep] for n, a in v.items()} if k == "aux" else v[keep]) for k, v in target.items()}


def test_terms_by_value() -> None:
    output, target = _output(), _target()
    parts = MFFMTLoss(lambda_loc=0.1, seg_weight=0.5, aux_weight=0.25)(output, target)
    assert isinstance(parts, LossParts)
    torch.testing.assert_close(parts.cls, F.cross_entropy(output.class_logits, target["label"]))
    # The 64x64 mask on the 2x2 grid: rows 8:40 cover 24/32 of the top cells, columns 16:33 cover 16/32 + 1/32.
    soft = torch.tensor([[24 / 32 * 16 / 32, 24 / 32 * 1 / 32], [8 / 32 * 16 / 32, 8 / 32 * 1 / 32]]).expand(3, 1, 2, 2)
    torch.testing.assert_close(parts.loc, F.binary_cross_entropy_with_logits(output.coarse_mask_logits, soft))
    probability = torch.sigmoid(output.mask_logits).flatten(1)
    truth = target["mask"].flatten(1)
    dice = 1 - (2 * (probability * truth).sum(1) + 1) / (probability.sum(1) + truth.sum(1) + 1)
    seg = F.binary_cross_entropy_with_logits(output.mask_logits, target["mask"]) + dice.mean()
    torch.testing.assert_close(parts.seg, seg)
    torch.testing.assert_close(parts.aux, F.cross_entropy(output.aux_logits["birads"], target["aux"]["birads"]))
    torch.testing.assert_close(parts.total, parts.cls + 0.1 * parts.loc + 0.5 * parts.seg + 0.25 * parts.aux)


@pytest.mark.parametrize(("field", "missing", "term"), [
    ("label", -1, "cls"),
    ("has_mask", False, "loc"),
    ("has_mask", False, "seg"),
    ("mask_is_box", True, "seg"),
    ("aux", -1, "aux"),
])
def test_a_sample_without_a_label_changes_its_term_by_nothing(field: str, missing, term: str) -> None:
    output, target = _output(), _target()
    target["mask"][1] = torch.rand(1, 64, 64)  # garbage where sample 1's mask is missing or a box
    if field == "aux":
        target["aux"]["birads"][1] = missing
    else:
        target[field][1] = missing
    loss = MFFMTLoss()
    with_gap = getattr(loss(output, target), term)
    without = getattr(loss(*_select(output, target, [0, 2])), term)
    torch.testing.assert_close(with_gap, without, rtol=0, atol=0)


def test_a_box_sample_counts_for_the_coarse_map_only() -> None:
    output, target = _output(), _target()
    target["mask_is_box"][1] = True
    parts = MFFMTLoss()(output, target)
    torch.testing.assert_close(parts.loc, MFFMTLoss()(output, _target()).loc)


def test_no_labels_at_all_gives_exact_zeros_and_a_gradient() -> None:
    output, target = _output(), _target()
    target["label"][:] = -1
    target["has_mask"][:] = False
    target["aux"]["birads"][:] = -1
    target["mask"][:] = float("nan")  # never read for samples without a mask
    parts = MFFMTLoss()(output, target)
    for value in parts:
        assert value.item() == 0.0
    parts.total.backward()
    for tensor in (*output[:3], output.aux_logits["birads"]):
        assert tensor.grad is not None and torch.equal(tensor.grad, torch.zeros_like(tensor.grad))


def test_aux_term_is_zero_without_heads_or_without_targets() -> None:
    output, target = _output(aux=False), _target()
    assert MFFMTLoss()(output, target).aux.item() == 0.0
    del target["aux"]
    assert MFFMTLoss()(_output(), target).aux.item() == 0.0


def test_normal_images_teach_no_lesion() -> None:
    output, target = _output(), _target()
    target["mask"][:] = 0  # BUSI "normal": empty mask, has_mask True, no class
    target["label"][:] = -1
    parts = MFFMTLoss()(output, target)
    assert parts.loc.item() > 0 and parts.seg.item() > 0 and torch.isfinite(parts.total)
    empty = torch.zeros(1, 1, 8, 8)
    assert soft_dice_loss(torch.full((1, 1, 8, 8), -20.0), empty).item() == pytest.approx(0.0, abs=1e-6)
    assert soft_dice_loss(torch.full((1, 1, 8, 8), 20.0), empty).item() == pytest.approx(64 / 65, abs=1e-6)


def test_loss_weights_are_keywords_only():
    with pytest.raises(TypeError):
        MFFMTLoss(0.1, 0.5, 0.25)  # which weight is which? The caller must say.
