"""Leave-one-scanner-out experiment: how much does MFFMT lose on a scanner it has never seen?

Takes the train/validation split of a finished run (its ``split.json``), removes every image of one
scanner from both sides, trains on the rest with ``mffmt train``, then evaluates with
``mffmt evaluate`` on the remaining validation images (scanners seen in training) and on every image
of the left-out scanner (patients and scanner never seen). BUS-BRA patients were each scanned on one
device, so no patient straddles the two evaluations.

Example (the model card's left-out-domain figures now come from ``crossval.py``, which trains every
left-out domain at once on a GPU)::

    python experiments/leave_scanner_out.py --run runs/default_model \
        --scanner "GE Logiq 5 @10-12MHz" --output runs/unseen_logiq5 --input-size 160 --epochs 12
    python experiments/leave_scanner_out.py ... --fusion sum   # the same without MFF (ablation)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from MFFMTCore.base.choices import FUSION_CHOICES
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_dataset, record_key
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.files import write_text_atomic
from MFFMTCore.training.config import read_config_file


def datalist_item(record: SampleRecord) -> dict:
    item = {key: value for key, value in asdict(record).items() if value not in (None, [], "")}
    item["mask"] = item.pop("masks", [])
    return item


def mffmt(*args: str) -> None:
    command = [sys.executable, "-m", "MFFMTCore", *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="finished run folder whose split.json and config.json to reuse")
    parser.add_argument("--scanner", required=True, help="scanner to leave out, as the dataset names it")
    parser.add_argument("--output", required=True, help="experiment folder")
    parser.add_argument("--fusion", default="mff", choices=FUSION_CHOICES)
    parser.add_argument("--input-size", default="160")
    parser.add_argument("--epochs", default="12")
    args = parser.parse_args()

    run, output = RunFolder(args.run), Path(args.output)
    split = run.read_split()
    config = read_config_file(run.config)
    records = [record for path in config["data"] for record in read_dataset(path)]
    side = {key: name for name in ("train", "validation") for key in split[name]}
    sections: dict[str, list[dict]] = {"training": [], "validation": [], "held_out": []}
    for record in records:
        if record.scanner == args.scanner:
            sections["held_out"].append(datalist_item(record))
        elif record_key(record) in side:
            sections["training" if side[record_key(record)] == "train" else "validation"].append(datalist_item(record))
    if not sections["held_out"]:
        parser.error(f"no image of scanner {args.scanner!r} in {config['data']}")
    output.mkdir(parents=True, exist_ok=True)
    seen = output / "seen.json"
    write_text_atomic(seen, json.dumps({key: sections[key] for key in ("training", "validation")}, indent=1))
    unseen = output / "unseen.json"
    write_text_atomic(unseen, json.dumps({"validation": sections["held_out"]}, indent=1))
    print({key: len(value) for key, value in sections.items()}, flush=True)

    train_dir = RunFolder(output / "run")
    mffmt("train", "--data", str(seen), "--output", str(train_dir.path), "--preset", config["preset"],
          "--augment", config["augment"], "--fusion", args.fusion, "--input-size", args.input_size,
          "--epochs", args.epochs, "--seed", str(config["seed"]), "--progress", "none",
          *(["--resume"] if train_dir.checkpoint.exists() else []))
    model = str(train_dir.model)
    mffmt("evaluate", "--model", model, "--data", str(seen), "--split", str(train_dir.split),
          "--output", str(output / "eval_seen"), "--progress", "none")
    mffmt("evaluate", "--model", model, "--data", str(unseen), "--output", str(output / "eval_unseen"),
          "--progress", "none")
    for name in ("eval_seen", "eval_unseen"):
        overall = json.loads((output / name / "metrics.json").read_text())["overall"]
        print(name, {key: overall.get(key) for key in ("images", "auc", "accuracy", "sensitivity", "specificity", "dice")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
