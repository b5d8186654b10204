"""Scanner-robust augmentation of whole batches, on the device that trains (GPU or CPU).

A model trained on two GE scanners loses most on a new vendor where malignant lesions lose their
probability although image size and grey-level statistics look alike (issue 11): what differs is the
look of the image (gain and time-gain compensation, dynamic range, speckle size, resolution, field of
view and aspect ratio) and the vendor's marks (calipers, text). :class:`ScannerAugment` draws each of
these at random per image, jointly for image and mask, so that none of them can serve as a cue:

- lateral flip (the depth axis keeps its direction: posterior shadowing stays below the lesion);
- lesion-preserving random resized crop with a random aspect ratio (field of view, depth, pixel
  aspect); published as worth +0.02-0.03 AUC across breast-ultrasound datasets;
- gain, contrast and gamma (dynamic-range mapping), and a smooth random depth gain (TGC);
- multiplicative speckle of random grain; blur or down-and-up sampling (resolution);
- synthetic caliper crosses at random places, so that a caliper glyph says nothing about the lesion;
- lesion-free views: on a share of lesion images, a crop of the tissue beside the lesion (none of it
  in view), with an empty mask and no class. Lesion-free frames are most of a clip, but only 6% of the
  training images (BUSI's normal ones); without these views the decoder marks a lesion on most of them.

The batch is re-scaled to [0, 1] per image at the end, as :func:`preprocess_frame` does at inference.
Everything is vectorised over the batch with torch's random generator (the trainer's seed decides it).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _uniform(count: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.rand(count, device=device) * (high - low) + low


def _chance(count: int, probability: float, device: torch.device) -> torch.Tensor:
    return torch.rand(count, device=device) < probability


def _lesion_box(mask: torch.Tensor) -> torch.Tensor:
    """(B, 4) lesion extent (x0, x1, y0, y1) in [-1, 1] coordinates; the whole image when empty."""
    rows, cols = mask[:, 0].any(dim=2), mask[:, 0].any(dim=1)
    height, width = mask.shape[-2:]

    def extent(present: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.arange(size, device=mask.device).expand_as(present)
        first = torch.where(present, index, size).amin(dim=1)
        last = torch.where(present, index, -1).amax(dim=1)
        empty = ~present.any(dim=1)
        first = torch.where(empty, torch.zeros_like(first), first)
        last = torch.where(empty, torch.full_like(last, size - 1), last)
        return (2 * first.float() + 1) / size - 1, (2 * last.float() + 1) / size - 1

    x0, x1 = extent(cols, width)
    y0, y1 = extent(rows, height)
    return torch.stack([x0, x1, y0, y1], dim=1)


def _crop_affine(mask: torch.Tensor, min_area: float, max_log_aspect: float) -> torch.Tensor:
    """(B, 2, 3) affine grids for random crops that keep the whole lesion in view.

    A crop has a random area fraction in [min_area, 1] and aspect ratio exp(U(-a, a)); it grows to hold
    the lesion box, and its centre is drawn among the positions that keep both lesion and crop inside.
    """
    batch, device = mask.shape[0], mask.device
    area = _uniform(batch, min_area, 1.0, device)
    aspect = torch.exp(_uniform(batch, -max_log_aspect, max_log_aspect, device))
    half_w = (torch.sqrt(area * aspect)).clamp(max=1.0)  # half-extent in [-1, 1] units == fraction of image
    half_h = (torch.sqrt(area / aspect)).clamp(max=1.0)
    box = _lesion_box(mask)
    half_w = torch.maximum(half_w, (box[:, 1] - box[:, 0]) / 2)
    half_h = torch.maximum(half_h, (box[:, 3] - box[:, 2]) / 2)

    def centre(low: torch.Tensor, high: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
        # Inside the image: [-1 + half, 1 - half]; holding the lesion: [high - half, low + half].
        lower = torch.maximum(-1 + half, high - half)
        upper = torch.minimum(1 - half, low + half)
        upper = torch.maximum(upper, lower)
        return lower + torch.rand(batch, device=device) * (upper - lower)

    cx = centre(box[:, 0], box[:, 1], half_w)
    cy = centre(box[:, 2], box[:, 3], half_h)
    theta = torch.zeros(batch, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 0, 2] = half_w, cx
    theta[:, 1, 1], theta[:, 1, 2] = half_h, cy
    return theta


def _lesion_free_affine(mask: torch.Tensor, min_side: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine grids of crops beside the lesion box (left, right, above or below: the widest side), and
    whether each image has such a side at least ``min_side`` of the image wide (or high)."""
    batch, device = mask.shape[0], mask.device
    box = _lesion_box(mask)  # x0, x1, y0, y1 in [-1, 1], pixel centres
    pixel = 2.0 / mask.shape[-1]
    # Free extent on each side, in [-1, 1] units: left, right, above, below.
    free = torch.stack([box[:, 0] + 1 - pixel, 1 - box[:, 1] - pixel, box[:, 2] + 1 - pixel, 1 - box[:, 3] - pixel], 1)
    side = free.argmax(dim=1)
    extent = free.max(dim=1).values.clamp(min=1e-3)
    usable = extent >= 2 * min_side
    half = extent / 2
    along = torch.clamp(half * torch.exp(_uniform(batch, -0.2, 0.2, device)), max=1.0)  # keep the aspect near 1
    offset = (torch.rand(batch, device=device) * 2 - 1) * (1 - along)
    theta = torch.zeros(batch, 2, 3, device=device)
    horizontal = side < 2
    theta[:, 0, 0] = torch.where(horizontal, half, along)
    theta[:, 1, 1] = torch.where(horizontal, along, half)
    centre = torch.stack([-1 + half, 1 - half, -1 + half, 1 - half], 1).gather(1, side[:, None])[:, 0]
    theta[:, 0, 2] = torch.where(horizontal, centre, offset)
    theta[:, 1, 2] = torch.where(horizontal, offset, centre)
    return theta, usable


def _smooth_noise(shape: tuple[int, ...], grain: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Unit-variance noise whose grain (correlation length in pixels, per image) is ``grain``."""
    height, width = shape[-2:]
    out = torch.empty(shape, device=device)
    for value in torch.unique(grain):
        picked = grain == value
        coarse = (max(2, round(height / float(value))), max(2, round(width / float(value))))
        noise = torch.randn(int(picked.sum()), 1, *coarse, device=device)
        noise = F.interpolate(noise, size=(height, width), mode="bilinear", align_corners=False)
        out[picked] = noise / noise.flatten(1).std(dim=1).clamp(min=1e-6)[:, None, None, None]
    return out


def _rescale(images: torch.Tensor) -> torch.Tensor:
    """Per-image min-max scaling to [0, 1], as at inference."""
    low = images.flatten(1).amin(dim=1)[:, None, None, None]
    high = images.flatten(1).amax(dim=1)[:, None, None, None]
    return (images - low) / (high - low).clamp(min=1e-6)


def _caliper_crosses(shape: tuple[int, ...], probability: float, device: torch.device) -> torch.Tensor:
    """(B, 1, H, W) boolean marks: 0 to 4 '+' glyphs of 2-5 pixel arms on a random share of images."""
    batch, height, width = shape[0], shape[-2], shape[-1]
    crosses = 4
    present = _chance(batch * crosses, probability / 2, device).view(batch, crosses)
    present[:, 0] |= _chance(batch, probability, device)
    cx = torch.randint(0, width, (batch, crosses, 1, 1), device=device)
    cy = torch.randint(0, height, (batch, crosses, 1, 1), device=device)
    arm = torch.randint(2, 6, (batch, crosses, 1, 1), device=device)
    ys = torch.arange(height, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, device=device).view(1, 1, 1, width)
    dx, dy = (xs - cx).abs(), (ys - cy).abs()
    glyph = ((dy == 0) & (dx <= arm)) | ((dx == 0) & (dy <= arm))
    return (glyph & present[:, :, None, None]).any(dim=1, keepdim=True)


class ScannerAugment(nn.Module):
    """Random scanner-like changes of a batch of images (B, 1, H, W) in [0, 1] and their masks.

    Args:
        flip: probability of a left-right flip.
        crop: probability of a lesion-preserving random resized crop.
        min_area: smallest crop, as a fraction of the image area.
        max_aspect: largest change of aspect ratio (1.35: up to 35% wider or taller).
        intensity: probability of random gain, contrast and gamma.
        tgc: probability of a smooth random depth gain.
        speckle: probability of multiplicative speckle noise.
        blur: probability of a loss of resolution (blur, or down-and-up sampling).
        marks: probability of synthetic caliper crosses.
        lesion_free: probability that an image with a lesion mask becomes a lesion-free view.
        min_free_side: narrowest tissue strip beside the lesion that a lesion-free view may come from,
            as a fraction of the image (views are enlarged by at most its inverse).
    """

    def __init__(self, flip: float = 0.5, crop: float = 0.7, min_area: float = 0.5, max_aspect: float = 1.35,
                 intensity: float = 0.8, tgc: float = 0.5, speckle: float = 0.4, blur: float = 0.3,
                 marks: float = 0.3, lesion_free: float = 0.0, min_free_side: float = 0.4) -> None:
        super().__init__()
        self.flip, self.crop, self.min_area, self.max_aspect = flip, crop, min_area, max_aspect
        self.intensity, self.tgc, self.speckle, self.blur, self.marks = intensity, tgc, speckle, blur, marks
        self.lesion_free, self.min_free_side = lesion_free, min_free_side

    @torch.no_grad()
    def forward(self, images: torch.Tensor, masks: torch.Tensor,
                has_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """
        Args:
            images: (B, 1, H, W) float in [0, 1].
            masks: (B, 1, H, W) float 0/1 (zeros where a sample has no mask).
            has_mask: (B,) bool, which masks are real labels (lesion-free views need one); default all.

        Returns:
            (images, masks, lesion_free): images in [0, 1] and 0/1 masks of the same shapes, and (B,)
            bool marking the lesion-free views, whose class label no longer applies.
        """
        batch, device = images.shape[0], images.device
        images, masks = images.float().clone(), masks.float().clone()
        size = images.shape[-2:]
        lesion = masks.flatten(1).amax(dim=1) > 0.5
        if has_mask is not None:
            lesion &= has_mask.to(device).bool()
        free = lesion & _chance(batch, self.lesion_free, device)
        if free.any():
            theta, usable = _lesion_free_affine(masks[free] > 0.5, self.min_free_side)
            picked = torch.nonzero(free).flatten()[usable]
            free = torch.zeros_like(free)
            free[picked] = True
            if picked.numel():
                grid = F.affine_grid(theta[usable], [picked.numel(), 1, *size], align_corners=False)
                images[picked] = F.grid_sample(images[picked], grid, mode="bilinear", padding_mode="border",
                                               align_corners=False)
                masks[picked] = 0.0

        flip = _chance(batch, self.flip, device)[:, None, None, None]
        images = torch.where(flip, images.flip(-1), images)
        masks = torch.where(flip, masks.flip(-1), masks)

        crop = _chance(batch, self.crop, device) & ~free
        if crop.any():
            theta = _crop_affine(masks[crop] > 0.5, self.min_area, math.log(self.max_aspect))
            grid = F.affine_grid(theta, [int(crop.sum()), 1, *size], align_corners=False)
            images[crop] = F.grid_sample(images[crop], grid, mode="bilinear", padding_mode="border",
                                         align_corners=False)
            masks[crop] = (F.grid_sample(masks[crop], grid, mode="bilinear", padding_mode="zeros",
                                         align_corners=False) >= 0.5).float()

        change = _chance(batch, self.intensity, device)[:, None, None, None]
        gamma = torch.exp(_uniform(batch, -0.45, 0.45, device))[:, None, None, None]
        contrast = _uniform(batch, 0.7, 1.3, device)[:, None, None, None]
        gain = _uniform(batch, -0.12, 0.12, device)[:, None, None, None]
        adjusted = ((images.clamp(0, 1) ** gamma - 0.5) * contrast + 0.5 + gain).clamp(0, 1)
        images = torch.where(change, adjusted, images)

        depth = _chance(batch, self.tgc, device)[:, None, None, None]
        knots = torch.exp(_uniform(batch * 5, -0.35, 0.35, device)).view(batch, 1, 5, 1)
        curve = F.interpolate(knots, size=(size[0], 1), mode="bicubic", align_corners=True)
        images = torch.where(depth, (images * curve).clamp(0, 1), images)

        speckle = _chance(batch, self.speckle, device)[:, None, None, None]
        grain = torch.tensor([1.0, 2.0, 3.0], device=device)[torch.randint(0, 3, (batch,), device=device)]
        strength = _uniform(batch, 0.05, 0.25, device)[:, None, None, None]
        noisy = (images * (1 + strength * _smooth_noise(images.shape, grain, device))).clamp(0, 1)
        images = torch.where(speckle, noisy, images)

        soften = _chance(batch, self.blur, device)
        if soften.any():
            factor = float(_uniform(1, 1.3, 2.2, device))
            small = [max(8, round(side / factor)) for side in size]
            down = F.interpolate(images[soften], size=small, mode="bilinear", align_corners=False, antialias=True)
            images[soften] = F.interpolate(down, size=tuple(size), mode="bilinear", align_corners=False)

        marks = _caliper_crosses(images.shape, self.marks, device)
        images = torch.where(marks, torch.ones_like(images), images)
        return _rescale(images), masks, free
