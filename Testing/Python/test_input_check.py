"""The per-frame input check: statistics, colour, flags in results and clips, storage in the model file."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from MFFMTCore.base.labels import UNSUITABLE
from MFFMTCore.inference import Predictor
from MFFMTCore.inference.input_check import (
    COLOUR_LIMIT,
    METADATA_KEY,
    FeatureRecorder,
    FeatureStatistics,
    assess_frames,
    colour_share,
    read_statistics,
    write_statistics,
)
from MFFMTCore.inference.overlay import _caption
from MFFMTCore.inference.results_table import frame_rows
from MFFMTCore.model_file import load_model

SIZE = 64


def speckle(count: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 200, size=(count, 96, 128)).astype(np.uint8)


def test_statistics_limit_is_the_training_quantile_and_outliers_score_high():
    rng = np.random.default_rng(0)
    axis = np.eye(32)

    def cloud(count, centre):
        return rng.normal(size=(count, 32)) + 6 * axis[centre]

    features = cloud(1000, 0)
    statistics = FeatureStatistics.fit(features, neighbours=10, quantile=0.99)
    assert np.mean(statistics.raw_distance(features, skip_self=True) >= statistics.limit) == pytest.approx(0.01, abs=0.002)
    assert np.mean(statistics.distance(cloud(1000, 0)) >= 1) < 0.03  # fresh frames of the same kind
    assert np.mean(statistics.distance(cloud(200, 1)) >= 1) == 1.0  # another kind
    again = FeatureStatistics.from_json(statistics.to_json())
    fresh = cloud(50, 0)
    np.testing.assert_allclose(again.distance(fresh), statistics.distance(fresh), rtol=1e-6)
    with pytest.raises(ValueError, match="more than"):
        FeatureStatistics.fit(features[:15], neighbours=10)


def test_colour_share_and_reasons():
    grey = np.repeat(speckle(1)[..., None], 3, axis=-1)
    coloured = grey.copy()
    coloured[0, :24, :32] = (250, 120, 0)  # 24 * 32 / (96 * 128) = 6.25% orange
    shares = colour_share(np.concatenate([grey, coloured]), 3)
    assert shares[0] == 0 and shares[1] == pytest.approx(0.0625)
    assert colour_share(speckle(2), 1).tolist() == [0, 0]
    checks = assess_frames(shares, np.array([0.5, 0.5]))
    assert not checks[0].flagged and checks[0].reason == "" and checks[0].score == 0.5
    assert checks[1].flagged and checks[1].score == pytest.approx(0.0625 / COLOUR_LIMIT)
    assert "colour" in checks[1].reason
    (far,) = assess_frames(np.zeros(1), np.array([3.0]))
    assert far.flagged and "unlike the breast B-mode images" in far.reason
    (unchecked,) = assess_frames(np.zeros(1), None)
    assert not unchecked.flagged and unchecked.distance is None


def test_statistics_travel_in_a_copy_of_the_model_file(tmp_path, model_path):
    statistics = FeatureStatistics.fit(np.random.default_rng(1).normal(size=(100, 256)), neighbours=8)
    output = write_statistics(model_path, tmp_path / "checked.safetensors", statistics)
    assert read_statistics(model_path) is None  # the original is untouched
    stored = read_statistics(output)
    np.testing.assert_array_equal(stored.reference, statistics.reference)
    assert stored.limit == statistics.limit
    load_model(output)  # the weights' checksum still holds
    with pytest.raises(ValueError, match="refusing to overwrite"):
        write_statistics(output, output, statistics)


def test_recorder_takes_the_backbone_features(model_path):
    model, _ = load_model(model_path)
    with FeatureRecorder(model) as recorder, torch.inference_mode():
        model(torch.rand(3, 1, SIZE, SIZE))
    features = recorder.take()
    assert features.shape == (3, 256) and recorder.take() is None
    assert not model.backbone.layer3._forward_hooks  # the hook is gone after the block


def test_coloured_frames_of_a_clip_are_flagged_and_left_out_of_the_clip_finding(model_path):
    predictor = Predictor(model_path)
    clip = np.repeat(speckle(4)[..., None], 3, axis=-1)
    clip[2:, 10:60, 20:100] = (255, 60, 0)  # colour Doppler-like overlay on frames 2 and 3
    result = predictor.predict(clip, imaging_region="none")
    flags = [frame.input_check.flagged for frame in result.frames]
    assert flags == [False, False, True, True]
    assert [frame.prediction for frame in result.frames[2:]] == [UNSUITABLE, UNSUITABLE]
    assert result.frames[0].prediction in predictor.class_names
    assert result.clip.frames_assessed == 2 and result.clip.key_frame in (0, 1) and result.clip.num_frames == 4
    expected = result.class_probabilities[:2].mean(axis=0) if result.clip.aggregation == "mean" else None
    if expected is not None:
        assert result.clip.p_malignant == pytest.approx(float(expected[-1]), abs=1e-6)
    rows = frame_rows(result, "clip")
    assert rows[2]["prediction"] == UNSUITABLE and rows[2]["input_flagged"] is True
    assert "colour" in rows[2]["input_reason"] and rows[0]["input_reason"] is None
    assert result.with_threshold(0.3).frames[2].prediction == UNSUITABLE
    # The overlay's caption shows the flag, not a class probability, for a flagged frame.
    assert _caption(result, 2)[0] == f"frame 2: {UNSUITABLE}"
    assert _caption(result, 0)[0].startswith(f"frame 0: {result.frames[0].prediction}  p(malignant) = ")


def test_clip_with_every_frame_flagged_has_no_class(model_path):
    predictor = Predictor(model_path)
    clip = np.zeros((3, 96, 128, 3), dtype=np.uint8)
    clip[..., 0] = 250  # all red
    result = predictor.predict(clip, imaging_region="none")
    assert result.clip.prediction == UNSUITABLE and result.clip.frames_assessed == 0
    assert _caption(result, 0)[1] == f"clip: {UNSUITABLE}"


def test_feature_statistics_in_the_model_file_flag_unlike_frames(tmp_path, model_path):
    predictor = Predictor(model_path)
    frames = speckle(40, seed=3)
    with FeatureRecorder(predictor.model) as recorder:
        predictor.predict(frames, imaging_region="none")
    statistics = FeatureStatistics.fit(recorder.take(), neighbours=5, quantile=0.99)
    checked = write_statistics(model_path, tmp_path / "checked.safetensors", statistics)
    checked_predictor = Predictor(checked)
    assert checked_predictor.input_statistics is not None
    # A flat ramp with a bright disc is nothing like speckle.
    rows, columns = np.mgrid[:96, :128]
    odd = ((rows * 2 + columns) % 255).astype(np.uint8)
    odd[(rows - 48) ** 2 + (columns - 64) ** 2 < 400] = 255
    result = checked_predictor.predict(odd, imaging_region="none")
    (frame,) = result.frames
    assert frame.input_check.distance > 1 and frame.input_check.flagged
    assert frame.prediction == UNSUITABLE and "unlike" in frame.input_check.reason
    in_roi = checked_predictor.predict(odd, roi=(10, 10, 64, 64)).frames[0]
    assert in_roi.input_check.distance is None  # statistics of whole scans say nothing about a lesion box
    same_kind = checked_predictor.predict(speckle(1, seed=99)[0], imaging_region="none")
    assert same_kind.frames[0].input_check.distance < 1
    assert METADATA_KEY == "input_check"


@pytest.mark.slow
def test_fit_input_check_uses_the_models_split_and_reports_false_alarms(random_model, tmp_path):
    from test_train_synthetic import write_dataset

    from MFFMTCore.cli import main
    from MFFMTCore.model_file import read_model_info

    datalist = write_dataset(tmp_path / "data", count=48)
    model = random_model(tmp_path / "m.safetensors", input_size=[SIZE, SIZE],
                         training={"data": [str(datalist)], "split": {"val_fraction": 0.25, "seed": 0}})
    before = model.read_bytes()
    odd = tmp_path / "odd.png"
    from PIL import Image

    Image.fromarray(np.full((72, 72, 3), (255, 0, 0), dtype=np.uint8)).save(odd)
    output = tmp_path / "checked.safetensors"
    assert main(["fit-input-check", str(model), "--output", str(output), "--others", str(odd),
                 "--neighbours", "5"]) == 0
    assert model.read_bytes() == before
    report = json.loads((tmp_path / "checked.safetensors.input_check.json").read_text())
    assert report["train_frames"] + report["validation_frames"] == 48
    assert 0.0 <= report["validation_flagged"] <= 1.0 and report["others_all_flagged"] is True
    statistics = read_statistics(output)
    assert statistics.fitted["frames"] == report["train_frames"] and statistics.neighbours == 5
    assert read_model_info(output).architecture == read_model_info(model).architecture
    assert main(["fit-input-check", str(output), "--output", str(output)]) == 2  # never overwrites its input


# --- the shipped model on real files ---------------------------------------------------------------

NON_BREAST = ["examples_palette.dcm", "examples_ybr_color.dcm", "examples_jpeg2k.dcm", "examples_rgb_color.dcm",
              "ExplVR_BigEnd.dcm"]


@pytest.fixture(scope="module")
def shipped(default_model):
    predictor = Predictor(default_model)
    assert predictor.input_statistics is not None, f"{default_model}: the shipped model has no input-check statistics"
    return predictor


@pytest.mark.slow
@pytest.mark.parametrize("name", NON_BREAST)
def test_shipped_model_flags_every_frame_of_the_real_non_breast_files(shipped, name):
    from pydicom.data import get_testdata_file

    result = shipped.predict(get_testdata_file(name))
    assert all(frame.input_check.flagged for frame in result.frames)
    assert {frame.prediction for frame in result.frames} == {UNSUITABLE}
    if result.clip is not None:  # the cardiac cine: no malignant clip any more
        assert result.clip.prediction == UNSUITABLE


@pytest.mark.realdata
def test_shipped_model_passes_real_breast_images(shipped, shared_data):
    predictor = shipped
    images = sorted((shared_data / "busbra" / "Images").glob("*.png"))[:3] + sorted((shared_data / "busi" / "malignant").glob("*).png"))[:3]
    assert len(images) == 6, shared_data
    for image in images:
        (frame,) = predictor.predict(image).frames
        assert not frame.input_check.flagged, (image, frame.input_check)
