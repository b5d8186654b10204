"""What the imaging region, the measurements and the input check cost and change, on the validation split.

For the default (or a given) model, on the validation images of its own training split
(../shared/data), in one process:

- accuracy with the imaging region detected (``imaging_region="auto"``, the default) against the
  whole frame (``"none"``, before issue 13): AUC (malignant vs benign), mean Dice on images with a
  lesion mask, how many images get cropped and how much;
- time per image of ``Predictor.predict`` in both modes, and the share of it spent detecting the
  region (``detect_imaging_region``) and measuring lesions (``measure_lesion``);
- how many validation frames the input check flags (needs a model file with input-check statistics).

Run: ``python bench/bench_imaging_region.py [--model FILE] [--limit N]`` (about 0.3 s per image per mode
on one CPU thread).
"""

from __future__ import annotations

from needs import require

require("MFFMTCore")

import argparse
import json
import time

import numpy as np
import torch

from MFFMTCore.base.measurements import measure_lesion
from MFFMTCore.evaluation.metrics import dice_score, roc_auc
from MFFMTCore.files import read_mask
from MFFMTCore.inference import Predictor, as_frame_stack
from MFFMTCore.inference.imaging_region import detect_imaging_region
from MFFMTCore.model_file import read_model_info, resolve_model_path
from MFFMTCore.training.datasplit import plan_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="model file (default: the shipped model)")
    parser.add_argument("--limit", type=int, help="use only the first N validation images")
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = resolve_model_path(args.model)
    info = read_model_info(model)
    split = info.training.get("split") or {}
    _, validation, _ = plan_split(info.training["data"], float(split.get("val_fraction", 0.2)),
                                  int(split.get("seed", 0)))
    validation = validation[: args.limit] if args.limit else validation
    predictor = Predictor(model)
    figures: dict[str, dict] = {}
    for mode in ("none", "auto"):
        labels, scores, dice, seconds, cropped, kept_area, flagged = [], [], [], [], 0, [], 0
        for record in validation:
            started = time.perf_counter()
            result = predictor.predict(record.image, imaging_region=mode)
            seconds.append(time.perf_counter() - started)
            frame = result.frames[0]
            flagged += bool(frame.input_check and frame.input_check.flagged)
            if result.imaging_region is not None:
                cropped += 1
                x, y, w, h = result.imaging_region.box
                width, height = result.imaging_region.frame_size
                kept_area.append(w * h / (width * height))
            if record.label in ("benign", "malignant"):
                labels.append(int(record.label == "malignant"))
                scores.append(frame.p_malignant)
            if record.masks and record.label != "normal":
                dice.append(dice_score(result.label[0].astype(bool), read_mask(record.masks)))
        figures[mode] = {
            "images": len(validation), "auc": roc_auc(labels, scores), "dice": float(np.mean(dice)),
            "seconds_per_image": float(np.median(seconds)), "cropped_images": cropped,
            "mean_area_kept_when_cropped": float(np.mean(kept_area)) if kept_area else None,
            "input_check_flagged": flagged / len(validation),
        }
        print(mode, json.dumps(figures[mode]), flush=True)

    detect, measure = [], []
    for record in validation[:100]:
        stack = as_frame_stack(record.image)
        started = time.perf_counter()
        detect_imaging_region(stack.pixels, stack.components)
        detect.append(time.perf_counter() - started)
        if record.masks and record.label != "normal":
            mask = read_mask(record.masks)
            started = time.perf_counter()
            measure_lesion(mask, stack.geometry)
            measure.append(time.perf_counter() - started)
    per_image = figures["auto"]["seconds_per_image"]
    print(json.dumps({
        "detect_imaging_region_seconds": float(np.median(detect)),
        "detect_share_of_predict": float(np.median(detect)) / per_image,
        "measure_lesion_seconds": float(np.median(measure)),
        "measure_share_of_predict": float(np.median(measure)) / per_image,
        "predict_auto_over_none": per_image / figures["none"]["seconds_per_image"],
    }))


if __name__ == "__main__":
    main()
