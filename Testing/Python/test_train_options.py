"""The options of ``mffmt train`` are declared once (MFFMTCore/base/train_options.py): the command line,
the checks, config files, the Slicer command builder and the README's table all follow the declaration."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import pytest
import torch
from MFFMTSlicerLib import commands

from MFFMTCore.base import choices
from MFFMTCore.base.presets import PRESETS
from MFFMTCore.base.run_folder import RUN_FILES, STOP_NAME, RunFolder, read_split
from MFFMTCore.base.train_options import GROUPS, OPTIONS, TrainOptions, option_table
from MFFMTCore.cli import build_parser
from MFFMTCore.errors import MFFMTError
from MFFMTCore.losses import MFFMTLoss
from MFFMTCore.network import MFFMT, MFFMTOutput
from MFFMTCore.network.backbone import BACKBONE_LAYOUTS
from MFFMTCore.training.config import TrainConfig, merge_config, read_config_file
from MFFMTCore.training.optim import build_optimizer, lr_factor

REPO = Path(__file__).resolve().parents[2]


def _sample_value(name: str):
    """A valid value for each option, other than its default."""
    declared = OPTIONS[name]
    if declared.kind is bool:
        return not declared.default
    if declared.choices is not None:
        return next(choice for choice in reversed(declared.choices) if choice != declared.default)
    if declared.kind is list:
        return ["/data/busi", "/data/-starts-with-a-dash.csv"]
    if declared.path:
        return "/somewhere/file"
    if declared.kind is int:
        step = declared.range.multiple_of if declared.range is not None and declared.range.multiple_of else 1
        return 3 * step
    return 0.25 if declared.default == 0.5 else 0.5


def _train_parser():
    return build_parser()


def test_the_readme_table_is_the_declaration():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = "<!-- training options: generated from MFFMTCore/base/train_options.py -->\n"
    end = "<!-- end of training options -->"
    assert start in readme and end in readme
    table = readme[readme.index(start) + len(start):readme.index(end)]
    assert table == option_table(), ("README.md's training option table is stale; replace it (between the "
                                     "markers) with MFFMTCore.base.train_options.option_table():\n" + option_table())


def test_every_option_parses_back_from_the_arguments_that_give_it():
    parser = _train_parser()
    given = {name: _sample_value(name) for name, declared in OPTIONS.items() if declared.command_line}
    assert all(value != OPTIONS[name].default for name, value in given.items())
    for name, value in given.items():
        OPTIONS[name].check(value)
    arguments = [argument for name, value in given.items() for argument in OPTIONS[name].arguments(value)]
    parsed = vars(parser.parse_args(["train", *arguments]))
    assert {name: parsed[name] for name in given} == given
    # Nothing given: every option is None, so it does not override the config file or the preset.
    unset = vars(parser.parse_args(["train"]))
    assert all(unset[name] is None for name in given)


def test_every_option_is_declared_completely():
    assert list(OPTIONS) == list(TrainConfig.__dataclass_fields__)
    for name, declared in OPTIONS.items():
        assert declared.help and declared.group in GROUPS and declared.flag.startswith("--"), name
        assert declared.preset == (name in PRESETS["cpu"]) == (name in PRESETS["paper"]), name
        assert declared.choices is None or isinstance(declared.choices, tuple), name
    assert all(f"        {name}: {OPTIONS[name].help}." in TrainOptions.__doc__ for name in OPTIONS)
    for preset in PRESETS:  # the defaults work with every preset and backbone
        for backbone in choices.BACKBONES:
            TrainConfig(data=["d"], output="o", preset=preset, backbone=backbone).resolved()


def test_choices_are_what_the_code_implements():
    assert tuple(BACKBONE_LAYOUTS) == choices.BACKBONES
    assert all(tuple(values["lambda_loc"]) == choices.BACKBONES for values in PRESETS.values())
    assert set(commands.DEVICE_LABELS.values()) == set(OPTIONS["device"].choices)
    model = torch.nn.Linear(2, 2)
    optimisers = {name: type(build_optimizer(model, TrainConfig(data=["d"], output="o", optimizer=name).resolved()))
                  for name in choices.OPTIMIZERS}
    assert optimisers == {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    assert lr_factor(10, 0, 20, "constant") == 1.0 and lr_factor(20, 0, 20, "cosine") == 0.0
    for fusion in choices.FUSION_CHOICES:
        MFFMT(fusion=fusion, embed_dim=32)


@pytest.mark.parametrize("values, message", [
    ({"lr": -1.0}, "--lr: must be > 0, not -1.0"),
    ({"lr": math.nan}, "--lr: must be a finite number"),
    ({"epochs": "ten"}, "--epochs: must be a whole number, not 'ten'"),
    ({"epochs": True}, "--epochs: must be a whole number"),
    ({"input_size": 100}, "--input-size: must be > 0, a multiple of 32, not 100"),
    ({"val_fraction": 1.0}, "--val-fraction: must be > 0 and < 1, not 1.0"),
    ({"label_smoothing": 1.0}, "--label-smoothing: must be >= 0 and < 1, not 1.0"),
    ({"augment": "flips"}, "--augment: must be one of paper, lateral, scanner, not 'flips'"),
    ({"use_ca": "yes"}, "--ca: must be true or false"),
    ({"preset": "gpu"}, "--preset: must be one of paper, cpu"),
    ({"threads": 0}, "--threads: must be > 0"),
    ({"data": []}, "--data: no training data"),
    ({"data": "one/path"}, "--data: must be a list of texts"),
    ({"output": ""}, "--output: no run folder"),
])
def test_a_bad_value_is_one_line_naming_the_option(values, message):
    with pytest.raises(MFFMTError) as raised:
        TrainConfig(**{"data": ["d"], "output": "o", **values}).resolved()
    assert str(raised.value).startswith(message) and "\n" not in str(raised.value)


def test_a_config_file_is_checked_like_the_command_line(tmp_path, capsys):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"data": ["d"], "output": "o", "batch_size": "16"}))
    with pytest.raises(MFFMTError, match="--batch-size: must be a whole number, not '16'"):
        merge_config(read_config_file(config)).resolved()
    from MFFMTCore.cli import main

    assert main(["train", "--config", str(config)]) == 2
    assert "--batch-size: must be a whole number" in capsys.readouterr().err


def test_the_slicer_command_builder_spells_and_checks_every_option(tmp_path):
    given = {name: _sample_value(name) for name, declared in OPTIONS.items()
             if declared.command_line and name not in ("data", "output", "device")}
    args = commands.train_command("python", [tmp_path / "d"], tmp_path / "run", device="GPU", **given)
    parsed = vars(_train_parser().parse_args(args[3:]))
    assert {name: parsed[name] for name in given} == given and parsed["device"] == "cuda"
    with pytest.raises(MFFMTError, match="--label-smoothing: must be >= 0 and < 1"):
        commands.train_command("python", ["d"], "run", label_smoothing=-0.1)
    with pytest.raises(TypeError, match="learning_rate"):
        commands.train_command("python", ["d"], "run", learning_rate=1e-3)


def test_label_smoothing_softens_the_class_loss_only():
    output = MFFMTOutput(torch.tensor([[4.0, -4.0], [-4.0, 4.0]]), torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 2, 2), {})
    batch = {"label": torch.tensor([0, 1]), "mask": torch.zeros(2, 1, 8, 8), "has_mask": torch.tensor([True, True]),
             "mask_is_box": torch.tensor([False, False])}
    plain, smoothed = MFFMTLoss()(output, batch), MFFMTLoss(label_smoothing=0.2)(output, batch)
    # Confident right answers: smoothing raises the class loss (it asks for 0.9/0.1, not 1/0).
    assert float(smoothed.cls) > float(plain.cls) + 0.5
    expected = -(0.9 * torch.log_softmax(torch.tensor([4.0, -4.0]), 0)[0] + 0.1 * torch.log_softmax(
        torch.tensor([4.0, -4.0]), 0)[1])
    assert float(smoothed.cls) == pytest.approx(float(expected), rel=1e-5)
    for part in ("loc", "seg", "aux"):
        assert float(getattr(smoothed, part)) == float(getattr(plain, part))


def test_run_folder_layout(tmp_path):
    folder = RunFolder(tmp_path)
    assert folder.stop == tmp_path / STOP_NAME and folder.earlier_run() == []
    folder.write_split({"method": "group", "train": ["busi/a"], "validation": ["busi/b"]})
    folder.write_config(TrainConfig(data=["d"], output=str(tmp_path)))
    assert folder.earlier_run() == ["config.json", "split.json"]
    assert read_split(folder.split)["validation"] == ["busi/b"]
    assert json.loads(folder.config.read_text())["output"] == str(tmp_path)
    folder.remove_earlier_run()
    assert folder.earlier_run() == [] and not any(tmp_path.iterdir())
    folder.split.write_text("{}")
    with pytest.raises(MFFMTError, match="split.json: not a run's split.json"):
        folder.read_split()


def test_run_folder_file_names_are_written_nowhere_else():
    names = {*RUN_FILES, "progress.jsonl", STOP_NAME}
    sources = [path for folder in ("MFFMTCore", "MFFMTSlicer", "experiments") for path in (REPO / folder).rglob("*.py")
               if path.name != "run_folder.py"]
    found = {f"{path.relative_to(REPO)}:{node.lineno}": node.value for path in sources
             for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
             if isinstance(node, ast.Constant) and node.value in names}
    assert found == {}
