"""Test-time adaptation of BatchNorm statistics (``--adapt-norm``): the blend formula, the copy, the
single-frame answer, and the commands end to end, on small synthetic images."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from test_train_synthetic import write_dataset
from torch import nn

from MFFMTCore.cli import main
from MFFMTCore.inference import Predictor
from MFFMTCore.network.norm_adaptation import (
    MIN_FRAMES,
    NormAdaptation,
    adapt_batch_norm,
    adapted_layers,
    statistics_digest,
)


class TwoLayers(nn.Module):
    """conv -> BN -> conv -> BN; the first BN's input does not depend on any statistics."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.backbone = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3))
        self.head = nn.Sequential(nn.ReLU(), nn.Conv2d(3, 2, 3), nn.BatchNorm2d(2))
        with torch.no_grad():  # source statistics unlike the target's, so that a blend is visible
            self.backbone[1].running_mean.fill_(5.0)
            self.backbone[1].running_var.fill_(9.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def target_frames(count: int = 12) -> torch.Tensor:
    return torch.rand(count, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 + 0.5


def first_layer_target(model: TwoLayers, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and (biased) variance per channel of the first BN's input over every pixel of ``frames``."""
    with torch.no_grad():
        x = model.backbone[0](frames)
    return x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False)


@pytest.mark.parametrize("prior", [0.0, 4.0, 16.0])
def test_statistics_move_toward_the_target_as_the_blend_says(prior):
    model, frames = TwoLayers().eval(), target_frames()
    mean, var = first_layer_target(model, frames)
    # In batches of 5, 5 and 2 frames: the pooled statistics are those of all 12 frames at once.
    adapted = adapt_batch_norm(model, frames.split(5), prior_strength=prior)
    weight = 12 / (prior + 12)
    layer = adapted.backbone[1]
    torch.testing.assert_close(layer.running_mean, (1 - weight) * 5.0 + weight * mean, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.running_var, (1 - weight) * 9.0 + weight * var, rtol=1e-5, atol=1e-5)
    if prior == 0:  # AdaBN: the frames' statistics alone, so the adapted layer's output is standardised
        with torch.no_grad():
            out = adapted.backbone(frames)
        torch.testing.assert_close(out.mean(dim=(0, 2, 3)), layer.bias, atol=1e-4, rtol=0)


def test_the_model_given_is_not_changed_and_infinite_prior_changes_nothing():
    model = TwoLayers().eval()
    before = {key: value.clone() for key, value in model.state_dict().items()}
    unchanged = adapt_batch_norm(model, [target_frames()], prior_strength=math.inf)
    adapted = adapt_batch_norm(model, [target_frames()], prior_strength=16.0)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"{key} of the original model changed"
        assert torch.equal(unchanged.state_dict()[key], value)
    assert not torch.equal(adapted.backbone[1].running_mean, model.backbone[1].running_mean)
    x = target_frames(3)
    with torch.no_grad():
        assert torch.equal(unchanged(x), model(x))


def test_backbone_only_leaves_the_other_layers_alone():
    model = TwoLayers().eval()
    assert list(adapted_layers(model, "backbone")) == ["backbone.1"]
    adapted = adapt_batch_norm(model, [target_frames()], prior_strength=0.0, layers="backbone")
    assert not torch.equal(adapted.backbone[1].running_mean, model.backbone[1].running_mean)
    assert torch.equal(adapted.head[2].running_mean, model.head[2].running_mean)
    assert torch.equal(adapted.head[2].running_var, model.head[2].running_var)


def test_settings_are_checked():
    for bad in ({"prior_strength": -1.0}, {"prior_strength": math.nan}, {"layers": "decoder"},
                {"min_frames": 0}, {"min_frames": 20, "max_frames": 10}):
        with pytest.raises(ValueError):
            NormAdaptation(**bad)
    assert NormAdaptation(math.inf).to_json()["prior_strength"] is None  # strict JSON


def frames_on_disk(folder, count, seed=0):
    """``count`` grey PNG frames of one 'scanner' (bright, low contrast: unlike the model's init statistics)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for index in range(count):
        frame = (120 + 40 * rng.random((48, 56))).astype(np.uint8)
        frame[10:30, 15:35] //= 3  # a dark region
        paths.append(folder / f"frame_{index:02d}.png")
        sitk.WriteImage(sitk.GetImageFromArray(frame), str(paths[-1]))
    return paths


def test_predictor_copy_single_frame_and_too_few_frames(model_path, tmp_path):
    predictor = Predictor(model_path)
    paths = frames_on_disk(tmp_path / "frames", 10)
    before = predictor.predict(paths[0]).class_probabilities.copy()
    state = {key: value.clone() for key, value in predictor.model.state_dict().items()}

    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    adapted = predictor.adapted([*paths, corrupt], NormAdaptation(prior_strength=0.0))  # a bad input is left out
    assert adapted.norm_adaptation["applied"] and adapted.norm_adaptation["frames"] == 10
    assert adapted.norm_adaptation["inputs"] == 10
    assert adapted.model is not predictor.model and predictor.norm_adaptation is None
    assert all(torch.equal(value, state[key]) for key, value in predictor.model.state_dict().items())
    assert not np.allclose(adapted.predict(paths[0]).class_probabilities, before)  # the answer moved
    assert np.array_equal(predictor.predict(paths[0]).class_probabilities, before)  # the original did not

    # One frame, or fewer than the minimum: nothing is adapted, the answer is today's to the bit.
    for few in (paths[:1], paths[: MIN_FRAMES - 1]):
        same = predictor.adapted(few, NormAdaptation(prior_strength=0.0))
        assert not same.norm_adaptation["applied"] and same.norm_adaptation["frames"] == len(few)
        assert np.array_equal(same.predict(paths[0]).class_probabilities, before)


def test_predict_flag_end_to_end_and_off_is_today(model_path, tmp_path, capsys):
    paths = frames_on_disk(tmp_path / "frames", 9)
    runs = {}
    for name, extra in (("off", []), ("on", ["--adapt-norm", "--adapt-prior", "4"])):
        output = tmp_path / name
        assert main(["predict", str(tmp_path / "frames"), "--output", str(output), "--model", str(model_path),
                     "--outputs", "seg", "--threads", "1", "--progress", "none", *extra]) == 0
        runs[name] = json.loads((output / "results.json").read_text())
    err = capsys.readouterr().err
    assert "adapted to 9 frames of 9 input(s), prior strength 4 frames" in err
    assert "norm_adaptation" not in runs["off"]["settings"]  # off: the settings of today
    adaptation = runs["on"]["settings"]["norm_adaptation"]
    assert adaptation["applied"] and adaptation["prior_strength"] == 4 and adaptation["frames"] == 9
    assert all(entry["settings"]["norm_adaptation"] == adaptation for entry in runs["on"]["inputs"])
    p_off = [row["p_malignant"] for row in runs["off"]["rows"]]
    p_on = [row["p_malignant"] for row in runs["on"]["rows"]]
    assert len(p_on) == len(p_off) == 9 and not np.allclose(p_on, p_off)

    # Off is today's answer: the same figures as the predictor run frame by frame without adaptation.
    predictor = Predictor(model_path)
    today = [float(predictor.predict(path).class_probabilities[0, 1]) for path in paths]
    np.testing.assert_allclose(p_off, today, atol=1e-6)

    # A rerun with the same frames and settings finds every input finished; one without the flag redoes them.
    assert main(["predict", str(tmp_path / "frames"), "--output", str(tmp_path / "on"), "--model", str(model_path),
                 "--outputs", "seg", "--threads", "1", "--progress", "json",
                 "--adapt-norm", "--adapt-prior", "4"]) == 0
    statuses = [json.loads(line).get("status") for line in capsys.readouterr().out.splitlines() if '"status"' in line]
    assert statuses and set(statuses) == {"skipped"}


def test_evaluate_flag_records_the_adaptation(model_path, tmp_path, capsys):
    datalist = write_dataset(tmp_path / "data", count=8, normal=2)
    metrics = {}
    for name, extra in (("off", []), ("on", ["--adapt-norm", "--adapt-prior", "0"])):
        assert main(["evaluate", "--model", str(model_path), "--data", str(datalist), "--output",
                     str(tmp_path / name), "--threads", "1", "--progress", "none", *extra]) == 0
        metrics[name] = json.loads((tmp_path / name / "metrics.json").read_text())
    assert "adapted to 10 frames" in capsys.readouterr().err
    assert "norm_adaptation" not in metrics["off"]
    assert metrics["on"]["norm_adaptation"]["applied"] and metrics["on"]["norm_adaptation"]["frames"] == 10
    assert len(metrics["on"]["norm_adaptation"]["statistics_sha256"]) == 64  # which statistics answered
    assert metrics["on"]["overall"] != metrics["off"]["overall"]


def test_a_clip_is_adapted_on_its_own_frames_up_to_the_cap(model_path, tmp_path):
    rng = np.random.default_rng(2)
    clip = tmp_path / "clip.nrrd"
    sitk.WriteImage(sitk.GetImageFromArray((100 + 50 * rng.random((12, 40, 48))).astype(np.uint8)), str(clip))
    predictor = Predictor(model_path)
    adapted = predictor.adapted([clip], NormAdaptation(prior_strength=8.0, max_frames=9))
    assert adapted.norm_adaptation | {"statistics_sha256": None} == {
        "prior_strength": 8.0, "layers": "all", "min_frames": MIN_FRAMES, "max_frames": 9, "applied": True,
        "frames": 9, "inputs": 1, "statistics_sha256": None}
    # The record names the statistics that answer: the adapted network's, not the model file's.
    assert adapted.norm_adaptation["statistics_sha256"] == statistics_digest(adapted.model)
    assert statistics_digest(adapted.model) != statistics_digest(predictor.model)
    result = adapted.predict(clip)
    assert result.class_probabilities.shape == (12, 2) and np.isfinite(result.class_probabilities).all()
