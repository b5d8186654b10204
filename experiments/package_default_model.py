"""Turn a training run's best model into a model file to ship (the current default model comes from
``crossval.py package`` instead).

A run's model is complete already (``mffmt train`` fits its temperature, lesion-present rule and
input check on the run's validation patients: :mod:`MFFMTCore.model_completion`); a model from a run
that predates that is completed here by the same code first. Then the weights are stored as float16
(half the size; MFFMTCore loads them back as float32) with every fitted part, the model is named,
and the half-precision copy is checked to give the same validation figures: both copies are
evaluated with ``mffmt evaluate`` on the run's own validation split, and the figures are printed
side by side.

Example::

    python experiments/package_default_model.py --run runs/default_model \
        --output runs/default_model/packaged.safetensors --eval runs/default_model/eval
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from MFFMTCore.base.model_metadata import calibration_note, read_safetensors_metadata
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.inference.input_check import METADATA_KEY
from MFFMTCore.model_completion import complete_model
from MFFMTCore.model_file import load_model, read_model_info, save_model
from MFFMTCore.training.config import read_config_file
from MFFMTCore.training.datasplit import restore_split

KEYS = ("auc", "accuracy", "precision", "sensitivity", "specificity", "f1", "dice", "false_lesion_rate")


def evaluate(model: Path, run: RunFolder, output: Path) -> dict:
    config = read_config_file(run.config)
    command = [sys.executable, "-m", "MFFMTCore", "evaluate", "--model", str(model), "--split", str(run.split),
               "--output", str(output), "--progress", "none"]
    for path in config["data"]:
        command += ["--data", path]
    subprocess.run(command, check=True)
    return json.loads((output / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="finished run folder")
    parser.add_argument("--output", required=True, type=Path, help="where to write the packaged model")
    parser.add_argument("--eval", required=True, type=Path, help="folder for the evaluations")
    parser.add_argument("--name", default="MFFMT18 default (BUSI + BUS-BRA)")
    args = parser.parse_args()

    run = RunFolder(args.run)
    config = read_config_file(run.config)
    if calibration_note(asdict(read_model_info(run.model))) is not None:
        train, validation, _ = restore_split(config["data"], run.split)
        complete_model(run.model, train, validation, config.get("init_model"))
    model, info = load_model(run.model)
    info.name = args.name
    fitted = {key: value for key, value in read_safetensors_metadata(run.model).items() if key == METADATA_KEY}
    save_model(args.output, model, info, half=True, entries=fitted)
    full = evaluate(run.model, run, args.eval / "float32")
    half = evaluate(args.output, run, args.eval / "float16")
    sizes = {name: path.stat().st_size / 2**20 for name, path in (("float32", run.model), ("float16", args.output))}
    print(f"size: float32 {sizes['float32']:.1f} MiB, float16 {sizes['float16']:.1f} MiB")
    for group in ("overall", *sorted(full["datasets"])):
        a = full["overall"] if group == "overall" else full["datasets"][group]
        b = half["overall"] if group == "overall" else half["datasets"][group]
        print(group, {key: (a.get(key), b.get(key)) for key in KEYS})
    return 0


if __name__ == "__main__":
    sys.exit(main())
