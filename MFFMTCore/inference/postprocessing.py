"""Network outputs back onto each frame's own pixel grid."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def resize_to_frame(maps: torch.Tensor, frame_shape: Sequence[int]) -> torch.Tensor:
    """Resize maps on the network grid back to a frame's exact (H, W) grid.

    Bilinear with ``align_corners=False``, the inverse of :func:`MFFMTCore.preprocessing.preprocess_frame`'s resize: a point
    at a pixel centre of the frame lands where that pixel was in the network input, so lesion maps
    line up with the input voxel for voxel. Resize logits (not probabilities): interpolating before
    the sigmoid keeps lesion borders sharp when a small network grid is enlarged.

    Args:
        maps: (N, 1, h, w) or (N, h, w) maps on the network grid.
        frame_shape: (H, W) of the frames.

    Returns:
        (N, H, W) float32 maps.
    """
    if maps.ndim == 3:
        maps = maps.unsqueeze(1)
    resized = F.interpolate(maps.float(), size=tuple(frame_shape), mode="bilinear", align_corners=False)
    return resized[:, 0]
