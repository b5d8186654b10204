"""Transforms and the dataset: formats, masks, crops, mask-safe resizing and joint augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_data_synthetic import square_mask, write_png

from MFFMTCore.data import (
    DatasetError,
    MFFMTDataset,
    SampleRecord,
    build_transforms,
    make_samples,
    preprocess_frame,
)
from MFFMTCore.data.samples import lesion_boxes
from MFFMTCore.data.transforms import LoadUltrasoundd, resize_mask

SHAPE = (32, 40)


def gradient() -> np.ndarray:
    """A uint8 picture whose every pixel is different enough to check crops and orientation."""
    rows, cols = np.mgrid[0:SHAPE[0], 0:SHAPE[1]]
    return (rows * 6 + cols).astype(np.uint8)


def sample(image: Path, masks: list[Path] = (), **fields) -> dict:
    return {"id": Path(image).stem, "image": str(image), "masks": [str(mask) for mask in masks], "label": "benign", "box": None,
            "crop": None, "margin": 0.0, **fields}


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".nrrd", ".nii.gz", ".dcm"])
def test_loads_every_format(tmp_path: Path, suffix: str) -> None:
    # JPEG is lossy: its masks would carry compression noise, so that case keeps a PNG mask.
    image, mask = tmp_path / f"image{suffix}", tmp_path / ("mask.png" if suffix == ".jpg" else f"mask{suffix}")
    sitk.WriteImage(sitk.GetImageFromArray(gradient()), str(image))
    sitk.WriteImage(sitk.GetImageFromArray(square_mask(SHAPE, slice(3, 9), slice(4, 12))), str(mask))
    data = LoadUltrasoundd()(sample(image, [mask]))
    tolerance = 8 if suffix == ".jpg" else 0  # JPEG is lossy
    assert data["image"].shape == (1, *SHAPE) and data["image"].dtype == np.float32
    assert np.abs(data["image"][0] - gradient()).max() <= tolerance
    assert data["mask"].shape == (1, *SHAPE) and data["mask"][0, 3:9, 4:12].all() and data["mask"].sum() == 48
    item = build_transforms(train=False, size=(64, 64))(sample(image, [mask]))
    assert item["image"].shape == (1, 64, 64) and 0 <= item["image"].min() and item["image"].max() <= 1


def test_rgb_image_becomes_grey(tmp_path: Path) -> None:
    image = write_png(tmp_path / "rgb.png", np.stack([gradient()] * 3, axis=-1), mode="RGB")
    assert LoadUltrasoundd()(sample(image))["image"].shape == (1, *SHAPE)


def test_masks_are_ored_without_uint8_overflow(tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png", gradient())
    # 128 + 128 wraps to 0 in uint8: adding masks would erase the overlap; OR must not.
    first = write_png(tmp_path / "a_mask.png", square_mask(SHAPE, slice(0, 10), slice(0, 10), value=128))
    second = write_png(tmp_path / "a_mask_1.png", square_mask(SHAPE, slice(5, 15), slice(5, 15), value=128))
    mask = LoadUltrasoundd()(sample(image, [first, second]))["mask"][0]
    expected = (square_mask(SHAPE, slice(0, 10), slice(0, 10)) | square_mask(SHAPE, slice(5, 15), slice(5, 15))) > 0
    assert np.array_equal(mask > 0, expected) and set(np.unique(mask)) == {0.0, 1.0}


@pytest.mark.parametrize("mode", ["1", "RGBA", "RGB"])
def test_one_bit_and_colour_masks(tmp_path: Path, mode: str) -> None:
    image = write_png(tmp_path / "a.png", gradient())
    mask = write_png(tmp_path / "a_mask.png", square_mask(SHAPE, slice(2, 6), slice(3, 9)), mode=mode)
    loaded = LoadUltrasoundd()(sample(image, [mask]))["mask"][0]
    assert np.array_equal(loaded > 0, square_mask(SHAPE, slice(2, 6), slice(3, 9)) > 0)


def test_mask_kinds_box_normal_and_none(tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png", gradient())
    boxed = LoadUltrasoundd()(sample(image, box=(4, 2, 10, 5)))
    assert boxed["has_mask"] and boxed["mask_is_box"] and boxed["mask"][0, 2:7, 4:14].all() and boxed["mask"].sum() == 50
    normal = LoadUltrasoundd()(sample(image, label="normal"))
    assert normal["has_mask"] and not normal["mask_is_box"] and normal["mask"].sum() == 0
    unknown = LoadUltrasoundd()(sample(image, label="malignant"))
    assert not unknown["has_mask"] and not unknown["mask_is_box"]


def test_size_mismatch_names_both_files(tmp_path: Path) -> None:
    image = write_png(tmp_path / "scan.png", gradient())
    mask = write_png(tmp_path / "outline.png", np.zeros((30, 40)))
    with pytest.raises(DatasetError, match="scan.png.*40x32.*40x30.*outline.png"):
        LoadUltrasoundd()(sample(image, [mask]))


def test_corrupt_image_is_named_and_does_not_stop_the_rest(tmp_path: Path) -> None:
    good = write_png(tmp_path / "good.png", gradient())
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not a picture")
    with pytest.raises(DatasetError, match="broken.png"):
        LoadUltrasoundd()(sample(bad))
    dataset = MFFMTDataset([sample(good), sample(bad), sample(good)], train=False, size=(32, 32))
    with pytest.raises(DatasetError, match=r"1 of 3 samples.*broken.png"):
        dataset.build_cache(progress=False)
    assert dataset[2]["image"].shape == (1, 32, 32)  # the good ones were prepared


def test_mask_safe_resize_keeps_thin_lesions() -> None:
    mask = torch.zeros(1, 128, 128)
    mask[0, 10:100, 50] = 1  # one pixel wide: 1/4 of each output pixel after a fourfold shrink
    mask[0, 60:124, 70:110] = 1
    resized = resize_mask(mask, (32, 32))
    area_only = torch.nn.functional.interpolate(mask[None], size=(32, 32), mode="area")[0] >= 0.5
    assert not area_only[0, 2:25, 12].any()  # the naive way loses the line
    assert resized[0, 3:24, 12].all() and resized[0, :, 12].sum() <= 24
    assert resized[0, 15:31, 17:27].all() and set(resized.unique().tolist()) == {0.0, 1.0}
    assert resize_mask(torch.zeros(1, 50, 60), (32, 32)).sum() == 0


def test_lesion_mode_count_and_geometry(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:100, 0:80]
    picture = (rows * 2 + cols % 2).astype(np.uint8)
    image = write_png(tmp_path / "a.png", picture)
    lesions = square_mask((100, 80), slice(20, 30), slice(10, 30)) | square_mask((100, 80), slice(60, 90), slice(50, 60))
    lesions[95, 2] = 255  # an annotation speck is not a lesion
    mask = write_png(tmp_path / "a_mask.png", lesions)
    normal = write_png(tmp_path / "n.png", picture)
    records = [SampleRecord(id="a", image=str(image), masks=[str(mask)], label="benign", dataset="t"),
               SampleRecord(id="n", image=str(normal), label="normal", dataset="t"),
               SampleRecord(id="b", image=str(normal), box=(5, 6, 7, 8), label="malignant", dataset="t")]
    samples = make_samples(records, mode="lesion", margin=0.5)
    assert [(s["id"], s["crop"]) for s in samples] == [
        ("a#lesion0", (10, 20, 20, 10)), ("a#lesion1", (50, 60, 10, 30)), ("n", None), ("b#lesion0", (5, 6, 7, 8))]
    assert len(make_samples(records, mode="frame")) == 3
    first = LoadUltrasoundd()(samples[0])  # grown by half the box on each side: rows 15-35, cols 0-40
    assert np.array_equal(first["image"][0], picture[15:35, 0:40]) and first["mask"][0].sum() == 200
    second = LoadUltrasoundd()(samples[1])  # rows 45-105 clipped to the image's 100
    assert np.array_equal(second["image"][0], picture[45:100, 45:65])
    assert np.array_equal(second["mask"][0] > 0, lesions[45:100, 45:65] > 0)
    assert lesion_boxes(np.zeros((5, 5))) == []


def test_joint_augmentation_moves_image_and_mask_together(tmp_path: Path) -> None:
    # An L-shaped lesion: each of the 8 rotations/flips gives a different picture.
    lesion = square_mask((64, 64), slice(8, 40), slice(8, 18)) | square_mask((64, 64), slice(30, 40), slice(8, 50))
    image = write_png(tmp_path / "a.png", lesion)
    mask = write_png(tmp_path / "a_mask.png", lesion)
    dataset = MFFMTDataset([sample(image, [mask])] * 64, train=True, size=(64, 64))
    torch.manual_seed(0)
    orientations = set()
    for index in range(64):
        item = dataset[index]
        assert torch.equal(item["image"] > 0.5, item["mask"] > 0.5)
        orientations.add(item["mask"].numpy().tobytes())
    assert len(orientations) == 8
    torch.manual_seed(0)
    again = dataset[0]["mask"]
    torch.manual_seed(0)
    assert torch.equal(again, dataset[0]["mask"])  # the trainer's seed decides the augmentation


def test_dataset_items_collate_and_match_inference_preprocessing(tmp_path: Path) -> None:
    image = write_png(tmp_path / "a.png", gradient())
    mask = write_png(tmp_path / "a_mask.png", square_mask(SHAPE, slice(3, 9), slice(4, 12)))
    samples = [sample(image, [mask], label="malignant", birads="4a", scanner="S", id="x", dataset="d"),
               sample(image, label=None, id="y", dataset="d")]
    dataset = MFFMTDataset(samples, train=False, size=(64, 64))
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    assert batch["image"].shape == batch["mask"].shape == (2, 1, 64, 64) and batch["image"].dtype == torch.float32
    assert batch["label"].tolist() == [1, -1] and batch["aux"]["birads"].tolist() == [2, -1]
    assert batch["has_mask"].tolist() == [True, False] and batch["mask_is_box"].tolist() == [False, False]
    assert batch["id"] == ["x", "y"] and batch["scanner"] == ["S", ""] and batch["dataset"] == ["d", "d"]
    reference = preprocess_frame(gradient().astype(np.float32), (64, 64))
    assert (reference - batch["image"][0]).abs().max() <= 0.5 / 255 + 1e-6
    assert dataset.cache_bytes() == 2 * (64 * 64 + 64 * 64 // 8)


def test_preprocess_frames_equals_the_training_chain_to_the_last_bit():
    """Inference's batched scale-and-resize is the training chain's (MONAI ScaleIntensityd, resize_image)."""
    from monai.transforms import Compose

    from MFFMTCore.data.transforms import image_transforms, run_chain, to_tensors
    from MFFMTCore.preprocessing import preprocess_frames

    rng = np.random.default_rng(3)
    chain = Compose([*image_transforms((56, 48)), to_tensors()])
    for shape in [(120, 90), (31, 200), (56, 48)]:
        frames = np.stack([rng.integers(0, 256, shape).astype(np.float32),
                           rng.normal(40.0, 9.0, shape).astype(np.float32),
                           np.full(shape, 7.0, dtype=np.float32)])  # a constant frame: all zero
        batched = preprocess_frames(frames, (56, 48))
        assert batched.shape == (3, 1, 56, 48) and batched.dtype == torch.float32
        for frame, row in zip(frames, batched):
            expected = torch.as_tensor(run_chain(chain, {"image": frame[None]})["image"])
            assert torch.equal(row, expected)
        assert not batched[2].any()
