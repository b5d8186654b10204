"""Dice at each image's own resolution, through the same path a user takes (``Predictor``).

``mffmt evaluate`` measures Dice at the network's input size. This script runs the Predictor on
every validation image of a run (its ``split.json``), compares the label map it returns, in the
image's own pixel grid, with the image's mask files (OR-combined), and prints the mean Dice per
dataset over images with a lesion, and the false-lesion rate over lesion-free images.

Example::

    python experiments/native_dice.py --run runs/default_model --model MFFMTCore/models/mffmt18_default.safetensors
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_dataset, record_key
from MFFMTCore.evaluation.metrics import dice_score
from MFFMTCore.files import read_mask
from MFFMTCore.inference import Predictor
from MFFMTCore.training.config import read_config_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, type=Path, help="run folder with split.json and config.json")
    parser.add_argument("--model", type=Path, help="model file (default: the run's model.safetensors)")
    args = parser.parse_args()

    run = RunFolder(args.run)
    config = read_config_file(run.config)
    validation = set(run.read_split()["validation"])
    records = [r for path in config["data"] for r in read_dataset(path) if record_key(r) in validation]
    predictor = Predictor(args.model or run.model)
    dice, false_lesion = defaultdict(list), defaultdict(list)
    for record in tqdm(records, desc="native-resolution Dice", unit="image"):
        if not record.masks and record.label != "normal":
            continue
        truth = read_mask(record.masks) if record.masks else None
        predicted = sitk.GetArrayFromImage(predictor.predict(record.image).label_image()) > 0
        if truth is None or not truth.any():
            false_lesion[record.dataset].append(bool(predicted.any()))
        else:
            dice[record.dataset].append(dice_score(predicted, truth))
    for dataset in sorted(set(dice) | set(false_lesion)):
        scores, empties = dice[dataset], false_lesion[dataset]
        print(f"{dataset}: Dice {np.mean(scores):.3f} over {len(scores)} images with a lesion"
              + (f"; false-lesion rate {np.mean(empties):.3f} over {len(empties)} lesion-free images" if empties else ""))
    every = [score for scores in dice.values() for score in scores]
    print(f"all: Dice {np.mean(every):.3f} over {len(every)} images")
    return 0


if __name__ == "__main__":
    sys.exit(main())
