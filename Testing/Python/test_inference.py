"""Inference: geometry kept voxel for voxel, re-thresholding, ROI mode, clips, Grad-CAM, model-file safety.

Most tests swap the predictor's network for :class:`IntensityNet`, whose lesion map is "where the
image is bright": a known answer, so the tests can check that every map lands on the right pixels
of the input, in its physical geometry.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import SimpleITK as sitk
import slicerio
import torch
from torch import nn

from MFFMTCore import model_file
from MFFMTCore.inference import (
    ImageGeometry,
    PhysicalBox,
    Predictor,
    aggregate_frames,
    find_components,
    resize_to_frame,
)
from MFFMTCore.inference.label_frames import LabelFrames
from MFFMTCore.inference.segmentation_file import write_segmentation
from MFFMTCore.model_file import ModelFileError, ModelInfo, save_model
from MFFMTCore.network import MFFMT, MFFMTOutput
from MFFMTCore.preprocessing import preprocess_frame

INPUT_SIZE = (64, 64)


class IntensityNet(nn.Module):
    """Stand-in network with a known answer: lesion logit 40 * (x - 0.5), malignancy from brightness.

    It counts its calls and the batch sizes it sees.
    """

    def __init__(self) -> None:
        super().__init__()
        self.batch_sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> MFFMTOutput:
        self.batch_sizes.append(len(x))
        mean = x.mean(dim=(1, 2, 3))
        class_logits = torch.stack([torch.zeros_like(mean), 20 * (mean - 0.15)], dim=1)
        return MFFMTOutput(class_logits, 40 * (x - 0.5), x[:, :, ::32, ::32], {})


@pytest.fixture
def predictor(model_path):
    """A predictor whose network is :class:`IntensityNet`."""
    predictor = Predictor(model_path, batch_size=8)
    predictor.model = IntensityNet()
    return predictor


def rotation_2d(angle: float) -> tuple[float, ...]:
    c, s = math.cos(angle), math.sin(angle)
    return (c, -s, s, c)


def rotation_3d(angle: float) -> tuple[float, ...]:
    """A rotation about the y axis followed by an axis swap: no axis stays where it was."""
    c, s = math.cos(angle), math.sin(angle)
    rotation = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]]) @ np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]])
    return tuple(rotation.ravel())


def bright_box(shape: tuple[int, int], rows: slice, columns: slice) -> np.ndarray:
    frame = np.full(shape, 20, dtype=np.uint8)
    frame[rows, columns] = 220
    return frame


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


def assert_same_grid(image: sitk.Image, reference: sitk.Image) -> None:
    assert image.GetSize() == reference.GetSize()
    assert image.GetDimension() == reference.GetDimension()
    np.testing.assert_allclose(image.GetSpacing(), reference.GetSpacing())
    np.testing.assert_allclose(image.GetOrigin(), reference.GetOrigin())
    np.testing.assert_allclose(image.GetDirection(), reference.GetDirection())


def test_resize_to_frame_puts_network_pixels_back_on_frame_pixels():
    """A ramp holding each network pixel's position in frame columns comes back as the column index."""
    height, width = 37, 53
    network_columns = torch.arange(INPUT_SIZE[1], dtype=torch.float32)
    frame_column = (network_columns + 0.5) * width / INPUT_SIZE[1] - 0.5  # pixel centre to pixel centre
    ramp = frame_column.expand(1, 1, *INPUT_SIZE).clone()
    back = resize_to_frame(ramp, (height, width))
    assert back.shape == (1, height, width)
    # Linear interpolation reproduces a linear function exactly away from the clamped border.
    np.testing.assert_allclose(back[0, :, 1:-1].numpy(), np.tile(np.arange(1, width - 1), (height, 1)), atol=1e-4)


def test_known_map_through_preprocessing_and_back_lands_on_the_same_pixels():
    """A mask resized as training resizes images, and back, covers the same pixels with the same centre."""
    mask = bright_box((90, 141), slice(20, 61), slice(33, 100)) > 100
    on_network_grid = preprocess_frame(mask.astype(np.float32), INPUT_SIZE)
    back = resize_to_frame(on_network_grid[None], mask.shape)[0].numpy() >= 0.5
    assert iou(back, mask) > 0.9
    np.testing.assert_allclose(np.argwhere(back).mean(axis=0), np.argwhere(mask).mean(axis=0), atol=0.5)


def test_2d_frame_keeps_its_geometry_voxel_for_voxel(predictor):
    rows, columns = slice(20, 50), slice(30, 90)
    image = sitk.GetImageFromArray(bright_box((80, 120), rows, columns))
    image.SetSpacing((0.3, 0.7))
    image.SetOrigin((10.0, -5.0))
    image.SetDirection(rotation_2d(math.radians(30)))
    result = predictor.predict(image)

    for output in (result.label_image(), result.probability_image()):
        assert_same_grid(output, image)
    truth = np.zeros((80, 120), dtype=bool)
    truth[rows, columns] = True
    label = sitk.GetArrayFromImage(result.label_image()).astype(bool)
    assert iou(label, truth) > 0.9

    (component,) = result.frames[0].components
    centre_index = (np.mean([30, 89]), np.mean([20, 49]))  # (column, row)
    expected = image.TransformContinuousIndexToPhysicalPoint(centre_index)
    np.testing.assert_allclose(component.centroid[:2], expected, atol=0.5 * 0.7)
    assert component.centroid[2] == 0.0
    assert component.area_mm2 == pytest.approx(30 * 60 * 0.3 * 0.7, rel=0.1)
    assert component.bbox == pytest.approx((30, 20, 60, 30), abs=1)
    assert result.frames[0].prediction == "malignant"
    assert result.clip is None


def test_3d_clip_keeps_its_geometry_and_frames_stay_apart(predictor):
    frames = [slice(10 + 8 * k, 30 + 8 * k) for k in range(4)]
    clip = np.stack([bright_box((64, 96), rows, slice(40, 70)) for rows in frames])
    image = sitk.GetImageFromArray(clip)
    image.SetSpacing((0.2, 0.3, 1.5))
    image.SetOrigin((-7.0, 3.0, 12.0))
    image.SetDirection(rotation_3d(math.radians(20)))
    predictor.batch_size = 3  # chunks of 3 then 1
    result = predictor.predict(image)

    assert predictor.model.batch_sizes == [3, 1]
    assert_same_grid(result.label_image(), image)
    label = sitk.GetArrayFromImage(result.label_image()).astype(bool)
    for k, rows in enumerate(frames):
        truth = np.zeros((64, 96), dtype=bool)
        truth[rows, 40:70] = True
        assert iou(label[k], truth) > 0.85
        (component,) = result.frames[k].components
        expected = image.TransformContinuousIndexToPhysicalPoint((54.5, rows.start + 9.5, float(k)))
        np.testing.assert_allclose(component.centroid, expected, atol=0.5 * 0.3)
    assert result.clip is not None and result.clip.num_frames == 4
    assert result.clip.aggregation == "lesion-weighted mean"


def test_rgb_frame_and_rgb_clip_as_arrays(predictor):
    grey = bright_box((48, 72), slice(10, 30), slice(20, 50))
    rgb = np.repeat(grey[..., None], 3, axis=2)
    direction = rotation_2d(math.radians(-45))
    result = predictor.predict(rgb, spacing=(0.5, 0.25), origin=(1.0, 2.0), direction=direction)
    assert result.is_2d  # (H, W, 3) is one colour frame, not three frames
    assert result.label_image().GetSize() == (72, 48)
    np.testing.assert_allclose(result.label_image().GetDirection(), direction)
    assert iou(result.label[0].astype(bool), grey > 100) > 0.85
    assert result.frames[0].lesion_area_mm2 == pytest.approx(20 * 30 * 0.125, rel=0.1)

    stack = np.stack([rgb, rgb[::-1]])
    clip = predictor.predict(stack, spacing=(0.5, 0.25, 2.0))
    assert not clip.is_2d
    assert clip.label_image().GetSize() == (72, 48, 2)
    assert iou(clip.label[1].astype(bool), grey[::-1] > 100) > 0.85


def test_png_area_is_in_pixels_only(predictor, tmp_path):
    path = tmp_path / "frame.png"
    sitk.WriteImage(sitk.GetImageFromArray(bright_box((40, 60), slice(5, 25), slice(10, 40))), str(path))
    result = predictor.predict(path)
    assert not result.geometry.spacing_known
    assert result.frames[0].lesion_area_mm2 is None
    assert result.frames[0].lesion_area_px == pytest.approx(20 * 30, rel=0.1)
    known = predictor.predict(path, spacing=(0.1, 0.1))
    assert known.frames[0].lesion_area_mm2 == pytest.approx(20 * 30 * 0.01, rel=0.1)


def test_new_threshold_without_running_the_network(predictor):
    frame = np.tile(np.linspace(0, 255, 80, dtype=np.float32), (40, 1))  # brightness ramp left to right
    result = predictor.predict(frame)
    calls = len(predictor.model.batch_sizes)
    low, high = result.with_threshold(0.1), result.with_threshold(0.9)
    assert len(predictor.model.batch_sizes) == calls
    assert low.label.sum() > result.label.sum() > high.label.sum() > 0
    assert high.frames[0].lesion_area_px == high.label.sum()
    assert low.probability is result.probability  # the maps are shared, not recomputed
    with pytest.raises(ValueError, match="threshold"):
        result.with_threshold(0.0)
    with pytest.raises(ValueError, match="threshold"):
        predictor.predict(frame, threshold=1.5)
    assert len(predictor.model.batch_sizes) == calls  # refused before any network run


def test_without_measurements_the_answer_is_the_same_less_the_lesion_axes(predictor, tmp_path):
    """What a live stream asks for: the same label maps, classes, areas and centroids, lesions unmeasured,
    for a frame, a new threshold, and a clip whose maps stream to files."""
    frame = bright_box((60, 80), slice(10, 30), slice(20, 50)) + bright_box((60, 80), slice(40, 50), slice(60, 70))
    clip = np.stack([frame, frame[::-1]])
    maps = {"probability": tmp_path / "probability.nrrd"}
    for image, maps_to in ((frame, None), (clip, maps)):
        measured, plain = (predictor.predict(image, maps_to=maps_to, measurements=flag) for flag in (True, False))
        for made in (plain, plain.with_threshold(0.3)):
            reference = measured if made is plain else measured.with_threshold(0.3)
            np.testing.assert_array_equal(made.label, reference.label)
            np.testing.assert_array_equal(made.class_probabilities, reference.class_probabilities)
            assert len(made.frames[-1].components) == 2
            for found, expected in zip(made.frames, reference.frames):
                assert [dataclasses.replace(c, measurements=None) for c in expected.components] == found.components
                assert all(c.measurements is not None for c in expected.components)


def test_roi_classifies_the_box_and_pastes_its_map_into_the_full_frame(predictor):
    frame = bright_box((60, 100), slice(10, 30), slice(10, 30))
    frame[35:55, 60:90] = 220  # a second bright region, outside the ROI
    roi = (5, 5, 35, 35)
    result = predictor.predict(frame, roi=roi)
    assert result.roi == roi
    label = result.label[0].astype(bool)
    assert not label[:, 40:].any() and not label[40:, :].any()  # nothing outside the box
    truth = np.zeros_like(label)
    truth[10:30, 10:30] = True
    assert iou(label, truth) > 0.85
    assert (result.probability[0][:, 40:] == 0).all()

    # The class is decided on the crop: its bright share differs from the whole frame's.
    whole = predictor.predict(frame)
    assert result.frames[0].p_malignant != pytest.approx(whole.frames[0].p_malignant, abs=1e-3)

    # The same box given in physical space selects the same pixels, even with a rotated direction.
    geometry = dict(spacing=(0.5, 0.5), origin=(3.0, 4.0), direction=rotation_2d(math.radians(90)))
    image = predictor.predict(frame, **geometry).geometry
    corners = image.to_physical(np.array([[5.0, 5.0], [39.0, 39.0]]))
    physical = predictor.predict(frame, roi=PhysicalBox(tuple(corners[0]), tuple(corners[1])), **geometry)
    assert physical.roi == roi

    with pytest.raises(ValueError, match="outside"):
        predictor.predict(frame, roi=(200, 200, 10, 10))
    clipped = predictor.predict(frame, roi=(60, 20, 80, 80))
    assert clipped.roi == (60, 20, 40, 40)


def test_roi_is_grown_by_the_lesion_mode_training_margin(predictor):
    predictor.info.training = {"recipe": {"mode": "lesion", "margin": 0.2}}  # as `mffmt train` records it
    result = predictor.predict(np.zeros((100, 100), dtype=np.uint8), roi=(30, 30, 40, 35))
    assert result.roi == (22, 23, 56, 49)


def test_clip_aggregation_weights_frames_by_lesion_mass():
    names = ["benign", "malignant"]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.4, 0.6]])
    clip = aggregate_frames(probabilities, np.array([0.0, 300.0, 100.0]), names, np.array([5.0, 400.0, 150.0]))
    assert clip.aggregation == "lesion-weighted mean"
    assert clip.probabilities["malignant"] == pytest.approx(0.75 * 0.8 + 0.25 * 0.6)
    assert (clip.key_frame, clip.frames_with_lesion, clip.prediction) == (1, 2, "malignant")

    empty = aggregate_frames(probabilities, np.zeros(3), names, np.array([5.0, 1.0, 9.0]))
    assert empty.aggregation == "mean"
    assert empty.probabilities["malignant"] == pytest.approx(0.5)
    assert empty.key_frame == 2


def test_components_are_measured_in_pixels_and_millimetres():
    label = np.zeros((30, 40), dtype=bool)
    label[2:6, 3:13] = True  # 40 px
    label[20:25, 30:33] = True  # 15 px
    label[25, 33] = True  # touches the second one at a corner: same region (8-connectivity)
    geometry = ImageGeometry((0.5, 2.0), (100.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    large, small = find_components(label, label.astype(np.float32) * 0.75, geometry, frame=0)
    assert (large.area_px, large.area_mm2, large.bbox) == (40, 40.0, (3, 2, 10, 4))
    assert large.centroid == pytest.approx((100.0 + 7.5 * 0.5, 3.5 * 2.0, 0.0))
    assert (small.area_px, small.bbox) == (16, (30, 20, 4, 6))
    assert large.mean_probability == pytest.approx(0.75)


def test_real_network_batches_and_gradcam_in_the_input_geometry(model_path):
    predictor = Predictor(model_path, batch_size=2)
    clip = np.random.default_rng(0).integers(0, 255, size=(3, 50, 70), dtype=np.uint8)
    result = predictor.predict(clip, spacing=(0.2, 0.2, 1.0), gradcam=True)
    assert result.probability.shape == (3, 50, 70)
    assert ((result.probability >= 0) & (result.probability <= 1)).all()
    np.testing.assert_allclose(result.class_probabilities.sum(axis=1), 1.0, rtol=1e-5)
    cam = result.gradcam_image()
    assert cam.GetSize() == (70, 50, 3) and cam.GetSpacing() == (0.2, 0.2, 1.0)
    assert 0.0 <= result.gradcam.min() and result.gradcam.max() <= 1.0
    one = Predictor(model_path, batch_size=8).predict(clip, spacing=(0.2, 0.2, 1.0))
    np.testing.assert_allclose(one.probability, result.probability, atol=1e-5)  # chunking changes nothing


def test_tampered_or_mismatched_model_file_is_refused(model_path, tmp_path):
    tampered = tmp_path / "tampered.safetensors"
    data = bytearray(model_path.read_bytes())
    data[-100] ^= 0xFF  # a byte of the last tensor's weights
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="checksum"):
        Predictor(tampered)

    network = MFFMT(backbone="resnet18")
    mismatched = tmp_path / "mismatched.safetensors"
    save_model(mismatched, network, ModelInfo(architecture={**network.architecture, "decoder": False}))
    with pytest.raises(ModelFileError, match="do not fit"):
        Predictor(mismatched)


def test_without_a_model_the_message_says_what_to_do(monkeypatch):
    monkeypatch.setattr(model_file, "default_model_path", lambda: None)
    with pytest.raises(ModelFileError, match="--model"):
        Predictor()


def test_inputs_that_are_not_frames_are_refused(predictor, tmp_path):
    with pytest.raises(ValueError, match="not an image"):
        predictor.predict(np.zeros((2, 3, 4, 5, 6)))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        predictor.predict(broken)


def test_segmentation_extent_and_an_empty_lesion(tmp_path):
    mask = np.zeros((4, 6, 8), dtype=np.uint8)  # (k, j, i): frames, rows, columns
    assert LabelFrames.of(mask).extent() == [0, -1, 0, -1, 0, -1]  # Slicer's empty extent
    mask[3, 1, 2:5] = 1
    mask[1, 4, 6] = 1
    assert LabelFrames.of(mask).extent() == [2, 6, 1, 4, 1, 3]  # (i_min, i_max, j_min, j_max, k_min, k_max)
    np.testing.assert_array_equal(LabelFrames.of(mask).array(), mask)

    geometry = ImageGeometry((0.5, 0.5), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    path = write_segmentation(tmp_path / "empty.seg.nrrd", np.zeros((1, 6, 8), dtype=np.uint8), geometry)
    segmentation = slicerio.read_segmentation(str(path))
    assert segmentation["segments"][0]["name"] == "Lesion"
    assert segmentation["segments"][0]["extent"] == [0, -1, 0, -1, 0, -1]
    assert not segmentation["voxels"].any()


@pytest.fixture
def calibrated_model(random_model, tmp_path):
    """Makes a predictor over a model file carrying ``info`` (temperature, lesion rule), network IntensityNet."""

    def make(**info) -> Predictor:
        predictor = Predictor(random_model(tmp_path / "calibrated.safetensors", **info))
        predictor.model = IntensityNet()
        return predictor

    return make


def test_temperature_from_the_model_file_softens_the_class_probabilities(predictor, calibrated_model):
    frame = np.zeros((64, 64), dtype=np.float32)
    frame[:14] = 1.0  # mean ~0.22 after scaling -> malignant logit 20 * (0.22 - 0.15) ~ 1.4
    plain = predictor.predict(frame, imaging_region="none").frames[0].p_malignant
    softened = calibrated_model(temperature=4.0).predict(frame, imaging_region="none").frames[0].p_malignant
    logit = math.log(plain / (1 - plain))
    assert softened == pytest.approx(1 / (1 + math.exp(-logit / 4.0)), rel=1e-4)
    assert 0.5 < softened < plain


def test_lesion_rule_from_the_model_file_decides_per_frame(calibrated_model):
    predictor = calibrated_model(lesion_decision={"min_peak": 0.9, "min_area_fraction": 0.05})
    speck = np.zeros((100, 100), dtype=np.uint8)
    speck[10:13, 10:13] = 255  # 0.09% of the frame: a speck, not a lesion
    blob = np.zeros((100, 100), dtype=np.uint8)
    blob[40:70, 30:60] = 255  # 9% of the frame
    result = predictor.predict(np.stack([speck, blob]), imaging_region="none")  # synthetic: no scan area to find
    first, second = result.frames
    assert not first.lesion_present and first.components == [] and result.label[0].sum() == 0
    assert first.p_lesion > 0.99  # the map still peaks there; only the decision says no
    assert second.lesion_present and abs(second.lesion_area_px - 900) <= 30  # through the 64x64 network input
    assert result.label[1].sum() == second.lesion_area_px
    assert result.clip.frames_with_lesion == 1 and result.clip.key_frame == 1
    # The decision survives a new threshold, and a plain model counts any lesion pixel.
    assert not result.with_threshold(0.3).frames[0].lesion_present
    plain = calibrated_model().predict(speck, imaging_region="none").frames[0]
    assert plain.lesion_present and 0 < plain.lesion_area_px <= 16


def test_lesion_rule_in_an_roi_is_relative_to_the_roi(calibrated_model):
    predictor = calibrated_model(lesion_decision={"min_peak": 0.5, "min_area_fraction": 0.05})
    frame = np.zeros((200, 200), dtype=np.uint8)
    frame[20:30, 20:30] = 255  # 100 px: 0.25% of the frame, 6% of a 40x40 ROI around it
    assert not predictor.predict(frame, imaging_region="none").frames[0].lesion_present
    assert predictor.predict(frame, roi=(5, 5, 40, 40)).frames[0].lesion_present


@pytest.mark.parametrize("info, message", [
    ({"temperature": 0.0}, "temperature 0.0 must be a positive number"),
    ({"lesion_decision": {"min_peak": 2.0}}, "min_peak must be a number in"),
    ({"lesion_decision": {"area": 0.1}}, "unknown key"),
])
def test_bad_calibration_is_never_written_into_a_model_file(calibrated_model, tmp_path, info, message):
    with pytest.raises(ValueError, match=message):
        calibrated_model(**info)
    assert not (tmp_path / "calibrated.safetensors").exists()
