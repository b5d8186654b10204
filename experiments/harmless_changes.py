"""How much do harmless changes to an image move the default model's answer (issue 21, item 11)?

On real BUS-BRA images, each image is predicted as it is and after changes that do not change what
a radiologist sees: a 1-pixel black border, gamma 2 (a darker display curve), a left-right mirror
(the other breast's orientation, which training augments), a 180-degree rotation (the transducer at
the bottom) and a dual-view capture (the image beside another one, as scanners show two views).
For each change it prints how far p(malignant) moves (mean and 90th percentile of |change|), how
often the class flips at p = 0.5, and how often the input check flags the changed image or the
scan-area detection crops it::

    python experiments/harmless_changes.py --data ../shared/data/busbra --images 40

Figures go to stdout as a Markdown table; ``--json`` writes every image's numbers too. With
``--layout`` it runs no network: it counts how many of ALL the images, turned by 180° and put side
by side, the input check's layout checks flag (:func:`MFFMTCore.inference.input_check.layout_scores`),
and how many of the originals::

    python experiments/harmless_changes.py --data ../shared/data/busbra --data ../shared/data/busi --layout

Measured (issue 21), default model MFFMT18, 40 BUS-BRA images (every 33rd), none flagged as they are;
"before" without the layout checks, "after" with them (flagged frames get no answer, so flips are
counted among the answered):

| change | mean abs. change of p(malignant) | 90th pct. | class flips | flagged before -> after |
|---|---|---|---|---|
| 1-pixel black border | 0.024 | 0.058 | 1 of 40 | 0% -> 0% |
| gamma 2 | 0.043 | 0.101 | 1 of 40 | 0% -> 0% (the scan-area detection crops 30% of them) |
| left-right mirror | 0.052 | 0.145 | 0 of 40 | 0% -> 0% |
| 180° rotation | 0.192 -> 0.121 | 0.402 -> 0.285 | 8 of 37 -> 2 of 14 | 8% -> 65% |
| dual view | 0.299 -> none answered | 0.750 | 15 of 38 -> 0 of 0 | 5% -> 100% |

On all 1980 BUS-BRA and BUSI images (``--layout``): 5 originals flagged (0.25%), 66.4% of the 180°
rotations, 98.8% of the dual views.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from MFFMTCore.data import read_busbra, read_dataset
from MFFMTCore.files import read_grey
from MFFMTCore.inference import Predictor
from MFFMTCore.inference.input_check import layout_scores


def border(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    return np.pad(image, 1)


def gamma(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    return 255.0 * (image / 255.0) ** 2


def mirror(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    return image[:, ::-1]


def rotate(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    return image[::-1, ::-1]


def dual(image: np.ndarray, other: np.ndarray) -> np.ndarray:
    """The image on the left, another image on the right, a black gap between (a dual-view capture)."""
    height = max(image.shape[0], other.shape[0])
    pad = lambda part: np.pad(part, ((0, height - part.shape[0]), (0, 0)))  # noqa: E731
    return np.concatenate([pad(image), np.zeros((height, 12)), pad(other)], axis=1)


CHANGES: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "1-pixel black border": border, "gamma 2": gamma, "left-right mirror": mirror, "180° rotation": rotate,
    "dual view": dual,
}


def layout_counts(images: list[str]) -> int:
    """Print how often the layout checks flag the images, turned by 180°, and side by side in pairs."""
    flagged = {"original": 0, "180° rotation": 0, "dual view": 0}
    for index, path in enumerate(images):
        image, other = read_grey(path), read_grey(images[(index + 7) % len(images)])
        image, other = (picture if picture.ndim == 2 else picture[0] for picture in (image, other))
        for name, picture in (("original", image), ("180° rotation", rotate(image, other)),
                              ("dual view", dual(image, other))):
            flagged[name] += bool(layout_scores(picture[np.newaxis]).max() >= 1.0)
    print(f"{len(images)} images; flagged by the layout checks:")
    for name, count in flagged.items():
        print(f"- {name}: {count} ({count / len(images):.2%})")
    return 0


def answer(predictor: Predictor, image: np.ndarray) -> dict:
    result = predictor.predict(image.astype(np.float32))
    frame = result.frames[0]
    check = frame.input_check
    return {
        "p_malignant": frame.p_malignant, "prediction": frame.prediction,
        "flagged": bool(check is not None and check.flagged), "score": None if check is None else check.score,
        "cropped": result.imaging_region is not None,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", help="a BUS-BRA folder (with --layout: any dataset; repeatable)")
    parser.add_argument("--layout", action="store_true", help="only the layout checks, on every image")
    parser.add_argument("--images", type=int, default=40, help="images to use (spread over the dataset)")
    parser.add_argument("--model", help="model file (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="write every image's numbers to this file")
    args = parser.parse_args()
    args.data = args.data or ["../shared/data/busbra"]
    if args.layout:
        return layout_counts([record.image for path in args.data for record in read_dataset(path)])
    torch.set_num_threads(args.threads)
    records = read_busbra(args.data[0])
    chosen = records[:: max(len(records) // args.images, 1)][: args.images]
    predictor = Predictor(args.model)
    numbers = []
    for index, record in enumerate(chosen):
        image = read_grey(record.image)
        other = read_grey(chosen[(index + 1) % len(chosen)].image)
        entry = {"image": Path(record.image).name, "label": record.label, "original": answer(predictor, image)}
        for name, change in CHANGES.items():
            entry[name] = answer(predictor, change(image, other))
        numbers.append(entry)
        print(f"{index + 1}/{len(chosen)} {entry['image']}", file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(numbers, indent=1))
    original_flags = np.mean([entry["original"]["flagged"] for entry in numbers])
    print(f"{len(numbers)} BUS-BRA images, model {predictor.info.name}; the originals: "
          f"{original_flags:.0%} flagged by the input check\n")
    print("| change | mean abs. change of p(malignant) | 90th percentile | class flips | flagged | cropped |")
    print("|---|---|---|---|---|---|")
    for name in CHANGES:
        answered = [entry for entry in numbers if not entry[name]["flagged"] and not entry["original"]["flagged"]]
        moves = np.abs([entry[name]["p_malignant"] - entry["original"]["p_malignant"] for entry in answered])
        flips = sum(entry[name]["prediction"] != entry["original"]["prediction"] for entry in answered)
        flagged = np.mean([entry[name]["flagged"] for entry in numbers])
        cropped = np.mean([entry[name]["cropped"] for entry in numbers])
        shown = f"{moves.mean():.3f}" if len(moves) else "-"
        high = f"{np.quantile(moves, 0.9):.3f}" if len(moves) else "-"
        print(f"| {name} | {shown} | {high} | {flips} of {len(answered)} answered | {flagged:.0%} | {cropped:.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
