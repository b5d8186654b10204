"""A frame as the network sees it: grey, scaled to [0, 1] per frame, resized to the input size.

The paper's preprocessing (Wei et al. 2024, section 2.3) in one place, for both sides: training's
MONAI transform chain (:mod:`MFFMTCore.data.transforms`) resizes with :func:`resize_image`, and
inference runs :func:`preprocess_frames` on whole batches. This module needs only torch and NumPy,
so predicting never imports MONAI (its package import costs about 2 s at every process start).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

#: The network's input size in the paper (H, W).
DEFAULT_SIZE = (256, 256)


def expand_box(box: Sequence[int], margin: float, shape: Sequence[int]) -> tuple[int, int, int, int]:
    """Grow a box (x, y, w, h) by ``margin`` times its width/height on each side, clipped to ``shape``.

    Returns:
        (row0, row1, col0, col1), half-open pixel bounds inside an image of ``shape`` (H, W).
    """
    x, y, w, h = box
    dx, dy = round(margin * w), round(margin * h)
    rows, cols = shape[-2], shape[-1]
    return max(0, y - dy), min(rows, y + h + dy), max(0, x - dx), min(cols, x + w + dx)


def resize_image(image: torch.Tensor | np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of a (C, H, W) image with antialiasing, as torchvision's and PIL's bilinear resize.

    Without antialiasing a fourfold shrink (BUSI frames reach 1048 pixels) would alias the speckle.
    MONAI's ``Resized(anti_aliasing=True)`` is avoided: its Gaussian pre-filter is 20 times slower
    here and its memory grew by about 2 MB per distinct image size (measured on BUSI).
    """
    image = torch.as_tensor(image, dtype=torch.float32)
    return F.interpolate(image[None], size=tuple(size), mode="bilinear", align_corners=False, antialias=True)[0]


def preprocess_frames(grey: np.ndarray, size: Sequence[int] = DEFAULT_SIZE) -> torch.Tensor:
    """Grey (N, H, W) frames as the network sees them: (N, 1, h, w) float32 in [0, 1], as in training.

    The arithmetic of :func:`MFFMTCore.data.transforms.image_transforms` (MONAI's min-max
    ``ScaleIntensityd`` per frame, then :func:`resize_image`) on a whole batch at once, without the
    chain's per-frame Python overhead; equal to the chain to the last bit (``test_transforms.py``
    holds that).
    """
    frames = torch.as_tensor(np.asarray(grey, dtype=np.float32))
    low, high = frames.amin(dim=(1, 2), keepdim=True), frames.amax(dim=(1, 2), keepdim=True)
    flat = high == low
    # As MONAI's rescale_array: (x - min) / (max - min), and 0 for a constant frame.
    scaled = torch.where(flat, frames * 0.0, (frames - low) / torch.where(flat, torch.ones_like(high), high - low))
    # The frames as the channels of one image: each channel is resized on its own.
    return resize_image(scaled, size)[:, None]


def preprocess_frame(grey: np.ndarray, size: Sequence[int] = DEFAULT_SIZE) -> torch.Tensor:
    """A grey (H, W) frame as the network sees it: (1, h, w) float32 in [0, 1] (see :func:`preprocess_frames`)."""
    return preprocess_frames(np.asarray(grey)[None], size)[0]
