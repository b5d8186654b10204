"""One training path: every ``mffmt train`` run ends with a complete, calibrated model; fine-tuning
inherits from its parent and ends with a site report (synthetic data, 64 x 64 inputs, one thread)."""

from __future__ import annotations

import json
import math
import threading
import time
from dataclasses import asdict

import numpy as np
import pytest
import torch
from test_train_synthetic import write_dataset

from MFFMTCore.base.fine_tuning import FINE_TUNE_DEFAULTS
from MFFMTCore.base.model_metadata import FITTED, KEPT, NOT_FITTED, calibration_note, read_model_metadata
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.base.site_report import read_site_report, summary_text, warning_text
from MFFMTCore.cli import main
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.errors import MFFMTError
from MFFMTCore.evaluation.model_fit import MIN_FRAMES, FrameScore, fit_calibration, group_folds
from MFFMTCore.evaluation.site_report import site_report
from MFFMTCore.inference.input_check import read_statistics
from MFFMTCore.model_completion import _truth
from MFFMTCore.model_file import load_model, read_model_info
from MFFMTCore.training.datasplit import restore_split
from MFFMTCore.training.progress import CompletionBar, ProgressLog, read_progress
from MFFMTCore.training.trainer import epochs_without_improvement, selection_score

TINY = ["--batch-size", "4", "--threads", "1", "--progress", "none", "--val-fraction", "0.5"]


def scores(count: int = 60, groups: int = 12, overconfident: float = 4.0, free: int = 20, seed: int = 0):
    """Frames whose logits are ``overconfident`` times too large, and lesion-free frames whose maps
    peak lower than lesion frames' maps."""
    rng = np.random.default_rng(seed)
    out = []
    for index in range(count):
        label = index % 2
        logit = overconfident * (rng.normal(1.0 if label else -1.0, 1.2))
        out.append(FrameScore(f"p{index % groups}", label, True, float(logit), float(rng.uniform(0.7, 1.0)),
                              float(rng.uniform(0.02, 0.2)), float(rng.uniform(0.5, 0.9))))
    for index in range(free):
        out.append(FrameScore(f"p{index % groups}", -1, False, 0.0, float(rng.uniform(0.5, 0.8)),
                              float(rng.uniform(0.0, 0.02)), 1.0))
    return out


def test_temperature_and_lesion_rule_are_fitted_with_cross_fitted_figures():
    parts = fit_calibration(scores())
    temperature, rule = parts["temperature"], parts["lesion_decision"]
    assert temperature.status == FITTED and temperature.value > 2  # the logits were 4x too large
    figures = temperature.figures
    assert figures["ece_cross_fitted"] < figures["ece_before"] and figures["cross_fitted_frames"] == 60
    assert rule.status == FITTED and rule.value != {"min_peak": 0.0, "min_area_fraction": 0.0}
    assert rule.figures["lesion_free_frames"] == 20
    crossed = rule.figures["cross_fitted"]
    assert crossed["lesion_free_flagged"] < rule.figures["before"]["lesion_free_flagged"] == 1.0
    assert crossed["lesion_frames_kept"] >= 0.85
    json.dumps({name: part.to_json() for name, part in parts.items()}, allow_nan=False)


def test_folds_are_by_patient_and_stable():
    groups = [f"p{i % 7}" for i in range(50)]
    folds = group_folds(groups)
    assert len(set(folds.tolist())) == 5
    assert all(len({f for g, f in zip(groups, folds) if g == name}) == 1 for name in set(groups))
    assert (group_folds(groups) == folds).all()


def test_too_little_data_keeps_the_parents_value_and_says_which_part():
    few_free = scores(free=MIN_FRAMES - 1)
    parts = fit_calibration(few_free, parent_temperature=1.7, parent_rule={"min_peak": 0.9, "min_area_fraction": 0.01})
    assert parts["temperature"].status == FITTED
    rule = parts["lesion_decision"]
    assert rule.status == KEPT and rule.value == {"min_peak": 0.9, "min_area_fraction": 0.01}
    assert rule.message.startswith("lesion-present rule:") and "4 lesion-free" in rule.message
    assert "\n" not in rule.message
    # Without a parent: nothing is invented.
    alone = fit_calibration(few_free)["lesion_decision"]
    assert alone.status == NOT_FITTED and alone.value is None and "uncalibrated" in alone.message
    # One patient: not fitted either, however many frames.
    one = [FrameScore("p0", s.label, s.lesion, s.logit, s.peak, s.largest_fraction) for s in scores()]
    parts = fit_calibration(one, parent_temperature=2.0)
    assert parts["temperature"].status == KEPT and parts["temperature"].value == 2.0
    assert "1 patient group(s)" in parts["temperature"].message


def test_calibration_note_is_read_from_the_header(model_path, default_model):
    assert calibration_note(read_model_metadata(default_model)) is None  # fitted by crossval.py
    note = calibration_note(read_model_metadata(model_path))
    assert note.startswith("uncalibrated: no temperature and no lesion-present rule")
    partial = {"temperature": 1.3, "lesion_decision": {}, "fitted": {
        "temperature": {"status": FITTED}, "lesion_decision": {"status": NOT_FITTED}}}
    assert calibration_note(partial).startswith("uncalibrated: no lesion-present rule")


def test_lesion_free_rows_are_lesion_free_truth(tmp_path):
    assert _truth(SampleRecord("a", "a.png", label="normal")) == (False, None)
    assert _truth(SampleRecord("b", "b.png", label="benign"))[0] is True
    assert _truth(SampleRecord("c", "c.png"))[0] is None


def test_site_report_warns_when_the_new_model_is_not_better():
    good = scores(overconfident=1.0, seed=1)
    bad = [FrameScore(s.group, s.label, s.lesion, -s.logit, s.peak, s.largest_fraction, 0.1 if s.lesion else 1.0)
           for s in good]
    models = {"parent": {"temperature": 1.0, "lesion_decision": {"min_peak": 0.6, "min_area_fraction": 0.01}},
              "new": {"temperature": 1.0, "lesion_decision": {}}}
    report = site_report(good, bad, models, resamples=200)
    json.dumps(report, allow_nan=False)
    assert not report["better"] and {"auc", "dice", "lesion_free_flagged"} <= set(report["worse_on"])
    assert report["warning"].startswith("Warning: the new model is not better") and "AUC" in report["warning"]
    assert report["parent"]["metrics"]["auc"]["low"] <= report["parent"]["metrics"]["auc"]["value"] \
        <= report["parent"]["metrics"]["auc"]["high"]
    reverse = site_report(bad, good, {"parent": models["new"], "new": models["parent"]}, resamples=200)
    assert reverse["better"] and reverse["warning"] is None
    assert summary_text(reverse).startswith("Site report on 12 validation patients")
    assert warning_text(reverse) is None


def test_selection_by_loss_and_early_stopping_count():
    a = {"val_auc": 0.9, "val_dice": 0.5, "val_loss": 2.0}
    b = {"val_auc": 0.6, "val_dice": 0.5, "val_loss": 1.0}
    assert selection_score(a) > selection_score(b) and selection_score(b, "loss") > selection_score(a, "loss")
    history = [{"val_loss": 3}, {"val_loss": 1}, {"val_loss": 2}, {"val_loss": math.nan}, {"val_loss": 1.5}]
    assert epochs_without_improvement(history) == 3 and epochs_without_improvement([]) == 0


def validation_records(run, label: str | None = None) -> list[SampleRecord]:
    config = json.loads((run / "config.json").read_text())
    _, validation, _ = restore_split(config["data"], run / "split.json")
    return [record for record in validation if label is None or record.label == label]


@pytest.fixture(scope="module")
def parent_run(tmp_path_factory):
    """A from-scratch run at 64 x 64 (the parent of the fine-tuning runs)."""
    root = tmp_path_factory.mktemp("parent")
    datalist = write_dataset(root / "data", count=40, normal=4)
    run = root / "run"
    assert main(["train", "--data", str(datalist), "--output", str(run), "--input-size", "64", "--epochs", "2",
                 *TINY]) == 0
    return run


def test_every_run_ends_with_its_fitted_parts_under_the_checksum(parent_run, capsys):
    info = read_model_info(parent_run / "model.safetensors")  # verifies the checksum over info and entries
    assert set(info.fitted) == {"temperature", "lesion_decision", "input_check"}
    temperature = info.fitted["temperature"]
    assert temperature["status"] == FITTED and info.temperature == temperature["value"]
    assert temperature["figures"]["frames"]["benign"] + temperature["figures"]["frames"]["malignant"] == 20
    rule = info.fitted["lesion_decision"]
    # At most 4 normal images in the validation half: too few for a rule, so the run says so and has none.
    assert rule["status"] == NOT_FITTED and info.lesion_decision == {}
    assert rule["figures"]["lesion_free_frames"] == len(validation_records(parent_run, "normal")) < MIN_FRAMES
    assert info.fitted["input_check"]["status"] == NOT_FITTED  # 26 training frames: too few neighbours
    assert calibration_note(asdict(info)).startswith("uncalibrated: no lesion-present rule")
    load_model(parent_run / "model.safetensors")


def completion_events(run) -> list[dict]:
    """The "progress" events of a run's model completion, checked to lie between its last epoch and "done"."""
    events = read_progress(run / "progress.jsonl")
    kinds = [event["event"] for event in events]
    last_epoch, done = len(kinds) - 1 - kinds[::-1].index("epoch"), kinds.index("done")
    assert set(kinds[last_epoch + 1:done]) == {"progress"} and "progress" not in kinds[:last_epoch]
    return events[last_epoch + 1:done]


def test_the_model_completion_shows_its_progress(parent_run, capsys):
    events = completion_events(parent_run)
    counts = [event["done"] for event in events]
    total = events[0]["total"]
    assert counts == sorted(counts) and counts[-1] == total and all(event["total"] == total for event in events)
    validation = len(validation_records(parent_run))
    # One event per validation image scored (and per fitted part): the bar moves while the frames are read.
    assert len(events) > validation
    messages = [event["message"] for event in events]
    assert all(message.startswith(CompletionBar.PREFIX) for message in messages)
    assert any(f"scoring {validation} validation images" in message for message in messages)
    assert any("temperature" in message for message in messages)
    assert messages[-1] == CompletionBar.PREFIX + "model completed"


def test_the_completion_bar_is_drawn_in_the_terminal_and_logged(tmp_path, capsys):
    log = ProgressLog(tmp_path / "progress.jsonl")
    bar = CompletionBar(log, enabled=True)
    bar(0, 10, "scoring 8 validation images")
    bar(10, 10, "model completed")
    bar.close()
    log.close()
    assert "completing the model" in capsys.readouterr().err
    assert [(e["done"], e["total"]) for e in read_progress(tmp_path / "progress.jsonl")] == [(0, 10), (10, 10)]


def test_a_stop_during_the_completion_keeps_the_model_and_resume_completes_it(tmp_path):
    datalist = write_dataset(tmp_path / "data", count=24, normal=4, seed=7)
    run, stop_file = tmp_path / "run", tmp_path / "STOP"

    def stop_at_the_first_completion_event():  # as Slicer's Cancel does: the stop file
        while not stop_file.exists():
            if (run / "progress.jsonl").exists() and '"progress"' in (run / "progress.jsonl").read_text():
                stop_file.touch()
            time.sleep(0.01)

    watcher = threading.Thread(target=stop_at_the_first_completion_event, daemon=True)
    watcher.start()
    options = ["--input-size", "64", "--epochs", "1", "--stop-file", str(stop_file), *TINY]
    assert main(["train", "--data", str(datalist), "--output", str(run), *options]) == 0
    events = read_progress(run / "progress.jsonl")
    assert events[-1]["event"] == "cancelled" and "while completing the model" in events[-1]["message"]
    assert read_model_info(run / "model.safetensors").fitted == {}  # whole, not yet completed
    assert main(["train", "--output", str(run), "--resume", "--stop-file", str(tmp_path / "none")]) == 0
    assert read_progress(run / "progress.jsonl")[-1]["event"] == "done"
    assert set(read_model_info(run / "model.safetensors").fitted) == {"temperature", "lesion_decision", "input_check"}


def test_fine_tuning_inherits_and_writes_the_site_report(parent_run, tmp_path, capsys):
    site = write_dataset(tmp_path / "site", count=50, normal=40, seed=3)
    run = tmp_path / "fine"
    capsys.readouterr()
    # No input size, epochs or learning rate: the parent's size (64, not the preset's 256) and the
    # fine-tuning defaults; --epochs 1 only to keep the test short.
    assert main(["train", "--data", str(site), "--init-model", str(parent_run / "model.safetensors"),
                 "--output", str(run), "--epochs", "1", *TINY]) == 0
    printed = capsys.readouterr()
    config = json.loads((run / "config.json").read_text())
    assert config["input_size"] == 64 and config["lr"] == FINE_TUNE_DEFAULTS["lr"]
    assert config["select"] == "loss" and config["freeze_epochs"] == 1 and config["patience"] == 3
    # The first epoch is frozen: the backbone's weights are the parent's, the heads moved.
    parent, _ = load_model(parent_run / "model.safetensors")
    new, info = load_model(run / "model.safetensors")
    before, after = dict(parent.named_parameters()), dict(new.named_parameters())
    assert all(torch.equal(before[name], after[name]) for name in after if name.startswith("backbone."))
    assert any(not torch.equal(before[name], after[name]) for name in after if not name.startswith("backbone."))
    # Enough frames for the input check: its reference is the training frames, its limit from validation.
    statistics = read_statistics(run / "model.safetensors")
    assert info.fitted["input_check"]["status"] == FITTED and statistics is not None
    assert statistics.fitted["limit_from"] == "validation frames"
    # 20 lesion-free validation frames: the rule is fitted on them.
    assert info.fitted["lesion_decision"]["status"] == FITTED
    assert info.fitted["lesion_decision"]["figures"]["lesion_free_frames"] == 20
    folder = RunFolder(run)
    report = read_site_report(folder.site_report)
    assert report["patients"] == len({record.group_key() for record in validation_records(run)})
    assert set(report["parent"]["metrics"]) == {"auc", "sensitivity", "specificity", "dice", "lesion_free_flagged",
                                                "ece"}
    json.loads(folder.site_report.read_text(), parse_constant=lambda name: pytest.fail(f"{name} in strict JSON"))
    assert folder.site_report_picture.stat().st_size > 10_000
    assert "Site report on" in printed.out + printed.err
    assert folder.earlier_run()[-2:] == ["site_report.json", "site_report.png"]
    # Its completion also scores the parent and writes the site report, and says so while it does.
    messages = [event["message"] for event in completion_events(run)]
    assert any("scoring the parent model" in message for message in messages)
    assert any("site report" in message for message in messages[:-1])
    assert messages[-1].endswith("model completed and site report written")


def test_an_option_given_for_fine_tuning_wins_over_the_parents(parent_run, tmp_path):
    site = write_dataset(tmp_path / "site", count=16, normal=4, seed=5)
    run = tmp_path / "wider"
    assert main(["train", "--data", str(site), "--init-model", str(parent_run / "model.safetensors"),
                 "--output", str(run), "--epochs", "1", "--input-size", "96", "--embed-dim", "128",
                 "--freeze-epochs", "0", *TINY]) == 0
    info = read_model_info(run / "model.safetensors")
    assert info.input_size == [96, 96] and info.architecture["embed_dim"] == 128
    assert info.architecture["mlp_ratio"] == read_model_info(parent_run / "model.safetensors").architecture["mlp_ratio"]
    assert info.training["recipe"]["freeze_epochs"] == 0 and info.training["recipe"]["select"] == "loss"


def test_fine_tuning_refuses_a_parent_that_is_not_a_model(tmp_path, capsys):
    site = write_dataset(tmp_path / "site", count=8)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a model")
    assert main(["train", "--data", str(site), "--init-model", str(bad), "--output", str(tmp_path / "r"),
                 *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(bad) in err[0]
    assert not (tmp_path / "r").exists()


def test_predict_notes_an_uncalibrated_model(model_path, sample_frames, tmp_path, capsys):
    assert main(["predict", str(sample_frames[0]), "--model", str(model_path), "--output", str(tmp_path / "p"),
                 "--progress", "none"]) == 0
    err = capsys.readouterr().err
    assert "note:" in err and "uncalibrated" in err
    document = json.loads((tmp_path / "p" / "results.json").read_text())
    assert document["model"]["calibration"].startswith("uncalibrated")


def test_errors_name_the_part(tmp_path):
    with pytest.raises(MFFMTError):
        read_site_report(tmp_path / "missing.json")


def test_real_lesion_free_frames_are_scored_as_lesion_free(shared_data, default_model):
    from MFFMTCore.data import read_busi
    from MFFMTCore.inference.predictor import Predictor
    from MFFMTCore.model_completion import score_records

    records = read_busi(shared_data / "busi")
    picked = [r for r in records if r.label == "normal"][:2] + [r for r in records if r.label == "malignant"][:2]
    predictor = Predictor(default_model)
    scored = score_records(predictor, picked, features=True)
    assert [score.lesion for score in scored.scores] == [False, False, True, True]
    assert [score.label for score in scored.scores] == [-1, -1, 1, 1]
    assert all(score.dice is not None for score in scored.scores) and scored.features.shape[0] == 4
    # Scored raw, and the predictor is given back as it was.
    assert predictor.temperature == read_model_info(default_model).temperature


def test_the_site_report_judges_the_new_model_with_cross_fitted_values():
    from MFFMTCore.evaluation.model_fit import cross_fitted_parameters

    frames = scores(free=MIN_FRAMES - 1)  # the rule cannot be fitted: the parent's is kept
    parts = fit_calibration(frames, parent_rule={"min_peak": 0.9, "min_area_fraction": 0.01})
    temperatures, rules = cross_fitted_parameters(frames, parts)
    assert len(temperatures) == len(rules) == len(frames)
    assert len(set(temperatures)) > 1 and parts["temperature"].value not in set(temperatures)
    assert {rule.to_json() == {"min_peak": 0.9, "min_area_fraction": 0.01} for rule in rules} == {True}
    models = {key: {"temperature": parts["temperature"].value, "lesion_decision": parts["lesion_decision"].value}
              for key in ("parent", "new")}
    report = site_report(frames, frames, models, resamples=50, new_per_frame=(temperatures, rules))
    assert report["new_judged_with"] == "cross-fitted temperature and rule"
    # The same frames judged with values fitted on them look better calibrated than they are.
    assert report["new"]["metrics"]["ece"]["value"] > report["parent"]["metrics"]["ece"]["value"]
