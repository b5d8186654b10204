"""MONAI dictionary transforms from a sample (paths and labels) to network-ready tensors.

The chain follows the paper's preprocessing (Wei et al. 2024, section 2.3): grey image scaled to
[0, 1] per image, resized to 256 x 256 bilinearly, and for training random 90/180/270-degree
rotations and horizontal/vertical flips applied jointly to image and mask. It is split in two:
:func:`deterministic_transforms` (load, crop, scale, resize; cacheable) and
:func:`augmentation_transforms` (random, applied on every draw). Inference uses
:func:`MFFMTCore.preprocessing.preprocess_frames`, the same scale and resize (one definition,
imported here), so a frame is seen as in training.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.transforms import (
    Compose,
    EnsureTyped,
    MapTransform,
    RandFlipd,
    RandRotate90d,
    ScaleIntensityd,
)
from scipy import ndimage

from MFFMTCore.base.choices import AUGMENTATIONS
from MFFMTCore.data.records import DatasetError
from MFFMTCore.errors import MFFMTError
from MFFMTCore.files import ImageReadError, check_frame_size, check_frames, read_grey, read_mask
from MFFMTCore.preprocessing import DEFAULT_SIZE, expand_box, resize_image


def _single_frame(array: np.ndarray, path: str) -> np.ndarray:
    """(H, W) view of a 2D picture; a volume of several frames is not one training sample."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise DatasetError(path, f"has {array.shape[0]} frames; a training sample must be a single 2D frame")
    return array


class LoadUltrasoundd(MapTransform):
    """Read a sample's image as a grey (1, H, W) float32 array and build its lesion mask.

    The mask is the logical OR of the sample's mask files; without masks, a filled lesion box
    (``mask_is_box`` True, a weak label); without either, zeros with ``has_mask`` False, except for
    label "normal", whose empty mask is a real label ("no lesion here"). In lesion-crop mode (a
    ``crop`` box in the sample) image and mask are cut to that box grown by ``margin``.

    Reads keys: ``image`` (path), ``masks`` (paths), ``box``, ``label``, ``crop``, ``margin``.
    Writes keys: ``image``, ``mask`` (1, H, W) float32, ``has_mask``, ``mask_is_box``.

    Raises:
        DatasetError: unreadable or corrupt file, several frames, an image under 32x32 pixels or with
            a NaN or infinite pixel, or image and mask of different sizes.
    """

    def __init__(self, keys: KeysCollection = "image", mask_key: str = "mask") -> None:
        super().__init__(keys)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = str(d[key])
            masks = [str(mask) for mask in d.get("masks") or []]
            try:
                image = _single_frame(read_grey(path), path)
                check_frame_size(image.shape, path, what="image")
                check_frames(image, path)
                mask = _single_frame(read_mask(masks), masks[0]) if masks else None
            except ImageReadError as error:
                raise DatasetError(error.path, error.problem) from error
            if mask is not None and mask.shape != image.shape:
                raise DatasetError(path, f"image size {image.shape[1]}x{image.shape[0]} differs from mask "
                                         f"size {mask.shape[1]}x{mask.shape[0]} of {masks[0]}")
            has_mask, is_box = mask is not None, False
            if mask is None:
                mask = np.zeros(image.shape, dtype=bool)
                if d.get("box") is not None:
                    row0, row1, col0, col1 = expand_box(d["box"], 0.0, image.shape)
                    mask[row0:row1, col0:col1] = True
                    has_mask, is_box = True, True
                else:
                    has_mask = d.get("label") == "normal"
            if d.get("crop") is not None:
                row0, row1, col0, col1 = expand_box(d["crop"], float(d.get("margin", 0.0)), image.shape)
                if row1 <= row0 or col1 <= col0:
                    raise DatasetError(path, f"lesion box {tuple(d['crop'])} lies outside the "
                                             f"{image.shape[1]}x{image.shape[0]} image")
                image, mask = image[row0:row1, col0:col1], mask[row0:row1, col0:col1]
            d[key] = np.ascontiguousarray(image[None], dtype=np.float32)
            d[self.mask_key] = np.ascontiguousarray(mask[None], dtype=np.float32)
            d["has_mask"], d["mask_is_box"] = has_mask, is_box
        return d


def resize_mask(mask: torch.Tensor | np.ndarray, size: Sequence[int]) -> torch.Tensor:
    """Resize a binary (1, H, W) mask without losing thin lesions or inventing labels.

    Each output pixel takes the lesion fraction of its input area and is kept at >= 0.5; a connected
    lesion that would vanish that way (e.g. one pixel wide, shrunk fourfold) keeps its densest output
    pixels instead. The result holds only 0 and 1.
    """
    mask = torch.as_tensor(mask) > 0.5
    fraction = F.interpolate(mask[None].float(), size=tuple(size), mode="area")[0]
    resized = fraction >= 0.5
    components, count = ndimage.label(mask[0].numpy())
    for index in range(1, count + 1):
        part = torch.from_numpy(components == index)[None, None].float()
        part_fraction = F.interpolate(part, size=tuple(size), mode="area")[0]
        if not (resized & (part_fraction > 0)).any():
            resized |= part_fraction >= 0.5 * part_fraction.max()
    return resized.float()


class ResizeSampled(MapTransform):
    """Resize to ``spatial_size`` (H, W): images with :func:`resize_image` (bilinear), the keys in
    ``mask_keys`` with :func:`resize_mask` (area fraction, threshold 0.5, thin lesions kept)."""

    def __init__(self, keys: KeysCollection, spatial_size: Sequence[int], mask_keys: Sequence[str] = ("mask",),
                 allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_size = tuple(spatial_size)
        self.mask_keys = set(mask_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            resize = resize_mask if key in self.mask_keys else resize_image
            d[key] = resize(d[key], self.spatial_size)
        return d


def image_transforms(size: Sequence[int] = DEFAULT_SIZE) -> list[MapTransform]:
    """Intensity scaling of the image to [0, 1] (min-max per image), then resizing of image and mask
    (when there is one) to ``size``."""
    return [ScaleIntensityd(keys="image", minv=0.0, maxv=1.0), ResizeSampled(["image", "mask"], size)]


def deterministic_transforms(size: Sequence[int] = DEFAULT_SIZE) -> list[MapTransform]:
    """Load, grey, crop, scale and resize: the part of the chain that can be cached."""
    return [LoadUltrasoundd("image"), *image_transforms(size)]


def augmentation_transforms(size: Sequence[int] = DEFAULT_SIZE, augment: str = "paper") -> list[MapTransform]:
    """Random flips (and quarter turns), one random draw shared by image and mask.

    Args:
        size: network input size; quarter turns swap height and width, so they are used only for a
            square ``size`` (two flips still give the half turn otherwise).
        augment: ``"paper"``: random 90/180/270-degree rotation and horizontal and vertical flips, the
            recipe of Wei et al. 2024; ``"lateral"``: left-right flips only, which keep the depth axis
            (top = skin) where posterior acoustic shadowing, a malignancy cue, sits below the lesion;
            ``"scanner"``: none here; the trainer applies
            :class:`MFFMTCore.data.augment.ScannerAugment` to whole batches on the training device.
    """
    keys = ["image", "mask"]
    if augment not in AUGMENTATIONS:
        raise MFFMTError("augment", f"must be one of {', '.join(AUGMENTATIONS)}, not {augment!r}")
    if augment == "scanner":
        return []
    lateral_flip = RandFlipd(keys=keys, prob=0.5, spatial_axis=1)
    if augment == "lateral":
        return [lateral_flip]
    rotation = [RandRotate90d(keys=keys, prob=0.75, max_k=3)] if size[0] == size[1] else []
    return [*rotation, RandFlipd(keys=keys, prob=0.5, spatial_axis=0), lateral_flip]


def to_tensors() -> EnsureTyped:
    """Plain float32 torch tensors (no MONAI metadata) so that torch's default collate works."""
    return EnsureTyped(keys=["image", "mask"], data_type="tensor", dtype=torch.float32, track_meta=False,
                       allow_missing_keys=True)


def build_transforms(train: bool, size: Sequence[int] = DEFAULT_SIZE, augment: str = "paper") -> Compose:
    """The whole chain from a sample dict to tensors; random augmentation only when ``train``."""
    random_part = augmentation_transforms(size, augment) if train else []
    return Compose([*deterministic_transforms(size), *random_part, to_tensors()])


def run_chain(chain: Compose, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
    """Apply ``chain`` to ``data``, letting a :class:`DatasetError` through as itself.

    MONAI's Compose wraps every exception in "RuntimeError: applying transform ..."; the user needs
    the file and the problem instead.
    """
    try:
        return chain(data)
    except RuntimeError as error:
        cause = error.__cause__
        while cause is not None and not isinstance(cause, DatasetError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
