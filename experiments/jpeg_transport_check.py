"""Does the JPEG (quality 95) transport of ``crossval.py pack`` change a model's answers?

The same random images through a model, once as the training code preprocesses them (lossless) and
once from the packed JPEGs. Run from the repository root after ``crossval.py pack``::

    python experiments/jpeg_transport_check.py [--images 400] [--model MODEL]
"""

from __future__ import annotations

import argparse
import json

import crossval  # the packed-data helpers, beside this script (its folder is sys.path[0])
import numpy as np
import torch

from MFFMTCore.data import MFFMTDataset, busbra_official_folds, group_kfold, make_samples, read_busi
from MFFMTCore.evaluation.metrics import grouped_report
from MFFMTCore.evaluation.predictions import predict_rows
from MFFMTCore.model_file import load_model, resolve_model_path


def lossless_batches(dataset: MFFMTDataset, size: int = 16):
    keys = ("image", "mask", "has_mask", "mask_is_box", "label", "id", "dataset", "scanner")
    for start in range(0, len(dataset), size):
        items = [dataset[i] for i in range(start, min(len(dataset), start + size))]
        yield {key: torch.stack([item[key] for item in items]) if isinstance(items[0][key], torch.Tensor)
               else [item[key] for item in items] for key in keys}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--packed", default=".gpu/packed.npz")
    parser.add_argument("--busi", default="../shared/data/busi")
    parser.add_argument("--busbra", default="../shared/data/busbra")
    parser.add_argument("--model", default=None, help="model file (default: the shipped model)")
    parser.add_argument("--images", type=int, default=400)
    args = parser.parse_args()

    data = crossval.load_packed(args.packed)
    pick = np.sort(np.random.default_rng(0).choice(len(data["meta"]), args.images, replace=False))
    busbra_folds = busbra_official_folds(args.busbra)
    busi_folds = group_kfold(read_busi(args.busi), k=len(busbra_folds), seed=0)
    records = [r for _, val in busbra_folds for r in val] + [r for _, val in busi_folds for r in val]
    if [r.id for r in records] != [item["id"] for item in data["meta"]]:
        raise SystemExit(f"{args.packed}: was packed from other data than {args.busi} and {args.busbra}")
    dataset = MFFMTDataset(make_samples([records[i] for i in pick], "frame"), train=False,
                           size=(data["size"], data["size"]))
    model, _ = load_model(resolve_model_path(args.model))
    chosen = np.zeros(len(data["meta"]), dtype=bool)
    chosen[pick] = True
    lossless, _ = predict_rows(model, lossless_batches(dataset))
    jpeg, _ = predict_rows(model, crossval.GpuBatches(data, chosen, torch.device("cpu")).in_order(16))
    a = np.array([row["p_malignant"] for row in lossless])
    b = np.array([row["p_malignant"] for row in jpeg])
    first, second = grouped_report(lossless)["overall"], grouped_report(jpeg)["overall"]
    print(json.dumps({"images": args.images, "mean_abs_dp": float(np.abs(a - b).mean()),
                      "max_abs_dp": float(np.abs(a - b).max()), "prediction_changed": int(((a >= 0.5) != (b >= 0.5)).sum()),
                      "auc_lossless": first["auc"], "auc_jpeg": second["auc"],
                      "dice_lossless": first["dice"], "dice_jpeg": second["dice"]}))


if __name__ == "__main__":
    main()
