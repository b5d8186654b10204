"""Scanner-robust batch augmentation: shapes and ranges, the lesion kept in view, joint geometry of
image and mask, lesion-free views that lose their labels, and the trainer's use of it."""

from __future__ import annotations

import pytest
import torch

from MFFMTCore.data.augment import ScannerAugment
from MFFMTCore.training.trainer import augment_batch

SIZE = 64


def lesion_batch(count: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Speckle-like images with one bright square lesion each at a random place."""
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(count, 1, SIZE, SIZE, generator=generator) * 0.4
    masks = torch.zeros(count, 1, SIZE, SIZE)
    for index in range(count):
        row, col = torch.randint(4, SIZE - 16, (2,), generator=generator).tolist()
        masks[index, 0, row:row + 10, col:col + 10] = 1
    images = torch.where(masks > 0, torch.full_like(images, 0.9), images)
    return images, masks


def test_outputs_are_rescaled_images_and_binary_masks():
    images, masks = lesion_batch()
    torch.manual_seed(1)
    out, out_masks, free = ScannerAugment()(images, masks)
    assert out.shape == images.shape and out_masks.shape == masks.shape and free.shape == (len(images),)
    assert torch.isfinite(out).all()
    assert torch.allclose(out.flatten(1).amin(1), torch.zeros(len(out)), atol=1e-6)
    assert torch.allclose(out.flatten(1).amax(1), torch.ones(len(out)), atol=1e-6)
    assert set(out_masks.unique().tolist()) <= {0.0, 1.0}
    assert not free.any()  # lesion-free views are off by default


def test_inputs_are_not_changed():
    images, masks = lesion_batch()
    before = images.clone(), masks.clone()
    ScannerAugment(lesion_free=0.5)(images, masks)
    assert torch.equal(images, before[0]) and torch.equal(masks, before[1])


def test_crops_keep_the_whole_lesion_in_view():
    images, masks = lesion_batch(32)
    torch.manual_seed(2)
    augment = ScannerAugment(crop=1.0, min_area=0.3, intensity=0, tgc=0, speckle=0, blur=0, marks=0)
    _, out_masks, _ = augment(images, masks)
    # A crop enlarges (area fraction <= 1): a lesion kept whole grows; a cut one would shrink.
    assert (out_masks.flatten(1).sum(1) >= 0.95 * masks.flatten(1).sum(1)).all()


def test_image_and_mask_move_together():
    images, masks = lesion_batch(32)
    torch.manual_seed(3)
    augment = ScannerAugment(flip=0.5, crop=1.0, intensity=0, tgc=0, speckle=0, blur=0, marks=0)
    out, out_masks, _ = augment(images, masks)
    # The bright lesion (0.9 against <= 0.4 before rescaling) must lie under the mask after any flip or crop.
    inside = (out * out_masks).flatten(1).sum(1) / out_masks.flatten(1).sum(1)
    outside = (out * (1 - out_masks)).flatten(1).sum(1) / (1 - out_masks).flatten(1).sum(1)
    assert (inside > outside + 0.3).all()


def test_lesion_free_views_show_no_lesion_and_lose_their_labels():
    masks = torch.zeros(16, 1, SIZE, SIZE)
    masks[:, 0, 2:12, 2:12] = 1  # lesions in a corner: a wide lesion-free side everywhere
    background = torch.rand(16, 1, SIZE, SIZE, generator=torch.Generator().manual_seed(0)) * 0.4
    images = torch.where(masks > 0, torch.full_like(background, 0.9), background)
    batch = {"image": images, "mask": masks, "has_mask": torch.ones(16, dtype=torch.bool),
             "label": torch.ones(16, dtype=torch.long), "aux": {"birads": torch.full((16,), 2)}}
    torch.manual_seed(4)
    out = augment_batch(ScannerAugment(lesion_free=1.0, crop=0, intensity=0, tgc=0, speckle=0, blur=0, marks=0), batch)
    assert out["mask"].sum() == 0
    assert (out["label"] == -1).all() and (out["aux"]["birads"] == -1).all()
    # The view is of the tissue beside the lesion: the lesion's flat bright block (rescaled to 1) is
    # not in it, only the single brightest background pixel or its interpolated neighbours.
    assert ((out["image"] > 0.999).flatten(1).sum(1) <= 4).all()


def test_lesion_free_views_need_a_real_mask_and_room_beside_the_lesion():
    images, masks = lesion_batch(4)
    masks[0] = 1  # the lesion fills the frame: nowhere to look beside it
    has_mask = torch.tensor([True, False, True, True])
    torch.manual_seed(5)
    _, out_masks, free = ScannerAugment(lesion_free=1.0)(images, masks, has_mask)
    assert free.tolist() == [False, False, True, True]
    assert out_masks[0].sum() > 0 and out_masks[1].sum() > 0


@pytest.mark.parametrize("device", ["cpu"])
def test_same_seed_same_views(device):
    images, masks = lesion_batch()
    results = []
    for _ in range(2):
        torch.manual_seed(6)
        results.append(ScannerAugment(lesion_free=0.3)(images.to(device), masks.to(device)))
    assert all(torch.equal(a, b) for a, b in zip(*results))
