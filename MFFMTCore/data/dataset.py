"""The torch Dataset that feeds MFFMT: cached preprocessing, fresh augmentation on every draw."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from monai.transforms import Compose
from torch.utils.data import Dataset

from MFFMTCore.base.progress_bar import progress_bar
from MFFMTCore.data.records import DatasetError, birads_index, label_index
from MFFMTCore.data.transforms import (
    DEFAULT_SIZE,
    augmentation_transforms,
    deterministic_transforms,
    run_chain,
    to_tensors,
)


class _Prepared(NamedTuple):
    """A sample after its deterministic preprocessing, packed small: uint8 grey levels (the
    quantisation step, 1/255, is far below ultrasound speckle) and a bit-packed mask."""

    image: np.ndarray
    mask_bits: np.ndarray
    has_mask: bool
    mask_is_box: bool


class MFFMTDataset(Dataset):
    """Samples (from :func:`make_samples`) as MFFMT training items.

    Each item is a dict: "image" (1, H, W) float32 in [0, 1], "mask" (1, H, W) float32 0/1,
    "has_mask" and "mask_is_box" (bool tensors), "label" (long: 0 benign, 1 malignant, -1 none),
    "aux" {"birads": long, index into BIRADS_CLASSES or -1}, and "id", "dataset", "scanner" strings
    ("" for an unknown scanner), so torch's default collate batches it.

    Loading, grey conversion, cropping, scaling and resizing are deterministic and are kept in memory
    (about 72 KiB per 256 x 256 sample), so epochs after the first decode nothing; with ``train``
    the random rotation and flips are drawn anew each time, from torch's random generator so that
    the trainer's seed (and DataLoader workers' seeds) decide them.

    Args:
        samples: sample dicts from :func:`make_samples`.
        train: apply random augmentation.
        size: network input size (H, W).
        augment: augmentation recipe when ``train`` (see :func:`augmentation_transforms`).
        cache: keep preprocessed samples in memory. With DataLoader workers, call
            :meth:`build_cache` first: each worker otherwise fills (and loses) its own copy.
    """

    def __init__(self, samples: Sequence[dict[str, Any]], train: bool, size: Sequence[int] = DEFAULT_SIZE,
                 augment: str = "paper", cache: bool = True) -> None:
        self.samples = list(samples)
        self.train = train
        self.size = tuple(size)
        self._prepare = Compose(deterministic_transforms(self.size))
        self._augment = Compose(augmentation_transforms(self.size, augment)) if train else None
        self._to_tensors = to_tensors()
        self._cache: list[_Prepared | None] | None = [None] * len(self.samples) if cache else None

    def __len__(self) -> int:
        return len(self.samples)

    def build_cache(self, progress: bool = True) -> None:
        """Preprocess every sample now (with a progress bar), so that training starts warm.

        Raises:
            DatasetError: one or more samples cannot be read; all are tried and the first few named.
        """
        if self._cache is None:
            return
        failures: list[str] = []
        for index in progress_bar(range(len(self)), desc="preparing images", unit="image", disable=not progress):
            try:
                self._prepared(index)
            except DatasetError as error:
                failures.append(str(error))
        if failures:
            raise DatasetError(f"{len(failures)} of {len(self)} samples", "; ".join(failures[:5]))

    def cache_bytes(self) -> int:
        """Memory held by the cache (array data only)."""
        return sum(entry.image.nbytes + entry.mask_bits.nbytes for entry in self._cache or [] if entry)

    def _prepared(self, index: int) -> _Prepared:
        if self._cache is not None and self._cache[index] is not None:
            return self._cache[index]
        data = run_chain(self._prepare, self.samples[index])
        image = torch.as_tensor(data["image"]).numpy()
        prepared = _Prepared(
            image=np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8),
            mask_bits=np.packbits(torch.as_tensor(data["mask"]).numpy() > 0.5),
            has_mask=bool(data["has_mask"]), mask_is_box=bool(data["mask_is_box"]))
        if self._cache is not None:
            self._cache[index] = prepared
        return prepared

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        prepared = self._prepared(index)
        shape = prepared.image.shape
        data = {"image": torch.from_numpy(prepared.image).float() / 255.0,
                "mask": torch.from_numpy(np.unpackbits(prepared.mask_bits, count=int(np.prod(shape)))
                                         .reshape(shape).astype(np.float32))}
        if self._augment is not None:
            self._augment.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
            data = run_chain(self._augment, data)
        data = self._to_tensors(data)
        return {
            "image": data["image"], "mask": data["mask"],
            "has_mask": torch.tensor(prepared.has_mask), "mask_is_box": torch.tensor(prepared.mask_is_box),
            "label": torch.tensor(label_index(sample.get("label")), dtype=torch.long),
            "aux": {"birads": torch.tensor(birads_index(sample.get("birads")), dtype=torch.long)},
            "id": str(sample["id"]), "dataset": str(sample.get("dataset") or ""),
            "scanner": str(sample.get("scanner") or ""),
        }
