"""Does a frame-level lesion-presence probe on the network's frozen features beat the lesion-map rule?

Issue 19's first lever, tried without retraining: a logistic regression on a frame's globally averaged
features (``backbone.layer3``: the input check's layer, ``backbone.layer4``, or the fused MFF output),
together with the two numbers the map rule uses (the map's peak and its largest region's share), is
fitted on a run's own validation frames: its lesion frames, a lesion-free view of each (the tissue
beside the lesion, cut as ScannerAugment's lesion-free views are, with a fixed seed) and any normal
frames. It is judged against the map rule on a site's judging half (``site_finetune.halves``), where
both the probe and the rule are given every threshold: the curves are frontiers on the judged frames,
equally optimistic for both. Reported: lesion frames kept with at most 10% / 20% of lesion-free frames
given a lesion, and lesion-free frames given one keeping 95% / 97%; also the probe AND the rule.

Every frame goes through :class:`MFFMTCore.inference.predictor.Predictor` (``mffmt predict``'s own
code), raw (temperature 1, no rule), as the model completion scores frames. Example (the runs of
``experiments/site_finetune.py --sites busi --train-without-site --epochs 6``)::

    nice python experiments/presence_probe.py --busbra ../shared/data/busbra --busi ../shared/data/busi \\
        --run runs/site_finetune/busi/without_site/base --output runs/presence_probe/zero_shot
    nice python experiments/presence_probe.py --busbra ../shared/data/busbra --busi ../shared/data/busi \\
        --run runs/site_finetune/busi/without_site/fine_tuned/run --output runs/presence_probe/fine_tuned
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from site_finetune import halves

from MFFMTCore.base.lesion_decision import LesionDecision
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import read_busbra, read_busi
from MFFMTCore.data.augment import _lesion_free_affine
from MFFMTCore.data.records import SampleRecord
from MFFMTCore.errors import MFFMTError
from MFFMTCore.evaluation.calibration import lesion_tradeoff, tradeoff_points
from MFFMTCore.files import read_grey, read_mask, write_json_atomic
from MFFMTCore.inference.predictor import Predictor

#: Feature sources of the probe (None: the map's two numbers alone).
LAYERS = ("backbone.layer3", "backbone.layer4", "fusion")
#: L2 strengths tried for each source.
STRENGTHS = (1e-3, 1e-2, 1e-1)
#: Narrowest free side a lesion-free view may come from, as ScannerAugment's default.
MIN_FREE_SIDE = 0.4


def lesion_free_view(image: np.ndarray, mask: np.ndarray, generator: torch.Generator) -> np.ndarray | None:
    """The tissue beside the lesion, resampled to the frame's size (ScannerAugment's lesion-free view), or
    None when no side of the lesion box is wide enough."""
    with torch.random.fork_rng():
        torch.manual_seed(int(torch.randint(0, 2**31, (1,), generator=generator)))
        theta, usable = _lesion_free_affine(torch.from_numpy(mask > 0)[None, None], MIN_FREE_SIDE)
    if not bool(usable[0]):
        return None
    pixels = torch.from_numpy(image.astype(np.float32))[None, None]
    grid = torch.nn.functional.affine_grid(theta, list(pixels.shape), align_corners=False)
    return torch.nn.functional.grid_sample(pixels, grid, mode="bilinear", align_corners=False)[0, 0].numpy()


class Scorer:
    """Raw map numbers and pooled features of single frames, through the Predictor."""

    def __init__(self, model: Path):
        self.predictor = Predictor(model, device="cpu")
        self.predictor.temperature, self.predictor.lesion_decision = 1.0, LesionDecision()
        self.predictor.input_statistics = None
        self.taken: dict[str, torch.Tensor] = {}
        for name in LAYERS:
            self.predictor.model.get_submodule(name).register_forward_hook(self._keep(name))

    def _keep(self, name: str):
        def hook(_module, _inputs, output):
            output = output[0] if isinstance(output, tuple) else output
            self.taken[name] = output.float().mean(dim=(2, 3)) if output.dim() == 4 else output.float().flatten(1)
        return hook

    def __call__(self, image, lesion: bool, group: str) -> dict:
        result = self.predictor.predict(image)
        frame = result.frames[0]
        largest = frame.components[0].area_px / result.analysed_px if frame.components else 0.0
        return {"lesion": lesion, "group": group, "peak": float(frame.p_lesion), "largest": largest,
                **{name: self.taken[name][0].numpy().tolist() for name in LAYERS}}


def score(scorer: Scorer, records: list[SampleRecord], views: bool) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for record in records:
        mask = read_mask(record.masks) if record.masks else None
        lesion = bool(mask.any()) if mask is not None else record.label != "normal"
        try:
            rows.append(scorer(record.image, lesion, record.group_key()))
            if views and mask is not None and mask.any():
                view = lesion_free_view(read_grey(record.image), mask, generator)
                if view is not None:
                    rows.append(scorer(view, False, record.group_key()))
        except MFFMTError as error:
            print(f"left out: {error}")
    return rows


def design(rows: list[dict], layer: str | None) -> np.ndarray:
    numbers = np.array([[row["peak"], np.log(row["largest"] + 1e-4)] for row in rows])
    return numbers if layer is None else np.concatenate([np.array([row[layer] for row in rows]), numbers], axis=1)


def fit_probe(x: np.ndarray, y: np.ndarray, strength: float):
    """Class-balanced L2 logistic regression on standardised inputs; returns its score function."""
    mean, std = x.mean(0), x.std(0) + 1e-6
    inputs, target = torch.tensor((x - mean) / std), torch.tensor(y, dtype=torch.float64)
    weight = torch.where(target > 0.5, 0.5 / target.mean(), 0.5 / (1 - target.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([w, b], max_iter=500, line_search_fn="strong_wolfe")

    def loss():
        optimiser.zero_grad()
        value = (weight * torch.nn.functional.binary_cross_entropy_with_logits(inputs @ w + b, target, reduction="none")
                 ).mean() + strength * (w * w).sum() / 2
        value.backward()
        return value

    optimiser.step(loss)
    w_, b_ = w.detach().numpy(), float(b.detach())
    return lambda z: ((z - mean) / std) @ w_ + b_


def frontier(found: list[np.ndarray], lesion: np.ndarray) -> dict[str, float | None]:
    """The trade-off figures (:func:`tradeoff_points`) of a family of frame-level decisions (one boolean
    array per setting)."""
    return tradeoff_points({"flagged": [float(f[~lesion].mean()) for f in found],
                            "kept": [float(f[lesion].mean()) for f in found]})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busbra", required=True)
    parser.add_argument("--busi", required=True)
    parser.add_argument("--run", type=Path, required=True, help="a run folder of mffmt train (its model and split)")
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    busi = read_busi(args.busi)
    records = read_busbra(args.busbra) + busi
    run = RunFolder(args.run)
    validation = {name.rsplit("/", 1)[-1] for name in run.read_split()["validation"]}
    fit_records = [r for r in records if Path(r.image).stem in validation]
    judged = halves(busi)[1]
    scorer = Scorer(run.model)
    fit_rows, judged_rows = score(scorer, fit_records, views=True), score(scorer, judged, views=False)
    y = np.array([row["lesion"] for row in fit_rows], dtype=float)
    lesion = np.array([row["lesion"] for row in judged_rows])
    peak = np.array([row["peak"] for row in judged_rows])
    largest = np.array([row["largest"] for row in judged_rows])
    rule = tradeoff_points(lesion_tradeoff(list(peak), list(largest), list(lesion)))
    report = {"run": str(args.run), "fit_frames": {"lesion": int(y.sum()), "lesion_free": int(len(y) - y.sum())},
              "judged_frames": {"lesion": int(lesion.sum()), "lesion_free": int((~lesion).sum())},
              "map_rule": rule, "probes": []}
    # The rule's grid for the probe AND the rule: 21 quantiles each (lesion_tradeoff takes 41), so the AND
    # figures are a little pessimistic beside the rule's own.
    rules = [(largest > 0) & (peak >= p) & (largest >= a) for p in np.quantile(peak, np.linspace(0, 1, 21))
             for a in np.concatenate([[0.0], np.quantile(largest[largest > 0], np.linspace(0, 1, 21))])]
    for layer in (None, *LAYERS):
        for strength in STRENGTHS:
            probe = fit_probe(design(fit_rows, layer), y, strength)(design(judged_rows, layer))
            probe = np.where(largest > 0, probe, -np.inf)  # a frame without a region shows no lesion
            cuts = np.unique(probe)
            alone = frontier([probe >= cut for cut in cuts], lesion)
            grid = np.concatenate([[-np.inf], np.quantile(cuts[np.isfinite(cuts)], np.linspace(0, 1, 21))])
            both = frontier([r & (probe >= cut) for r in rules for cut in grid], lesion)
            report["probes"].append({"features": layer or "map numbers", "l2": strength, "alone": alone,
                                     "and_map_rule": both})
    args.output.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.output / "presence_probe.json", report)
    print(table(report))
    return 0


def table(report: dict) -> str:
    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.0%}"

    keys = ("kept_at_flagged_0.1", "kept_at_flagged_0.2", "flagged_at_kept_0.95", "flagged_at_kept_0.97")
    lines = ["| decision | kept, <= 10% flagged | kept, <= 20% flagged | flagged keeping 95% | flagged keeping 97% |",
             "|---|---|---|---|---|",
             "| map rule (peak, largest region) | " + " | ".join(cell(report["map_rule"][k]) for k in keys) + " |"]
    for probe in report["probes"]:
        for part, name in (("alone", "probe"), ("and_map_rule", "probe AND map rule")):
            lines.append(f"| {name}: {probe['features']}, L2 {probe['l2']:g} | "
                         + " | ".join(cell(probe[part][k]) for k in keys) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
