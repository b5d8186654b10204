"""Cross-validation, leave-a-domain-out and the final model of a recipe, many runs at once on one GPU.

Three steps, each one command:

1. ``pack`` (here, where ../shared/data is): every BUSI and BUS-BRA image through the training code's
   own deterministic preprocessing (:class:`MFFMTCore.data.MFFMTDataset`: grey, min-max, resize to
   the input size), with its mask, labels, dataset, scanner and cross-validation fold, into one
   ``.npz``. Folds: BUS-BRA's official patient-level folds (``5-fold-cv.csv``; the folds present in
   ../shared/data are kFold 1-4, the fifth is held back), BUSI by near-duplicate group into as many
   folds (:func:`group_kfold`, stratified by label). Images are stored as JPEG (quality 95, an error
   of about 1 grey level, far below speckle; ``jpeg_transport_check.py`` measures its effect) so that
   the data travel to a GPU machine in 36 MiB.
2. ``run`` (on the GPU machine; needs torch, numpy, scipy, safetensors, MONAI, not SimpleITK): the jobs
   (recipe x fold, recipe x left-out domain, and the final model on all data) each in its own process,
   all at once. Data live on the GPU; :class:`ScannerAugment` (or flips only) augments whole batches
   there; loss, optimiser, schedule and network are the trainer's own. The number of epochs is set
   for all jobs alike from the step time measured with every job running, so that they end within
   ``--budget-s``. Every job is scored on its held-out images with its last epoch (no model
   selection on held-out data) by :func:`predict_rows`.
3. ``report`` (here): tables (mean +- sd over folds, per dataset and scanner; leave-a-domain-out
   drops), and the temperature and lesion-present rule fitted on the out-of-fold frames by the code
   every ``mffmt train`` run ends with (:func:`MFFMTCore.evaluation.model_fit.fit_calibration`, each
   fold a group, so its figures are nested by fold), with the reliability diagram before and after.
4. ``package`` (here): a final job's weights with the report's temperature and lesion rule and its
   figures as a model file.

The model card's figures (the GPU calls through ``crossval_device.sh``, which also brings the
results back)::

    python experiments/crossval.py pack --busi ../shared/data/busi --busbra ../shared/data/busbra \
        --output .gpu/packed.npz
    bash experiments/crossval_device.sh 500 --only baseline_fold0 baseline_fold1 baseline_fold2 \
        baseline_fold3 narrow_fold0 narrow_fold1 narrow_fold2 narrow_fold3 scanner_fold0 scanner_fold1 \
        scanner_fold2 scanner_fold3 baseline_no_logiq5 baseline_no_busi scanner_no_logiq5 \
        scanner_no_busi scanner_final narrow_final                       # -> runs/crossval
    bash experiments/crossval_device.sh 290 --recipes free --max-epochs 24   # -> runs/crossval_free
    python experiments/crossval.py report --results runs/crossval runs/crossval_free \
        --output runs/crossval/report --calibration-plot scanner
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np


def _allow_missing_simpleitk() -> None:
    """The GPU machine has no SimpleITK and nothing can be installed there; ``run`` reads no image
    file, so a stand-in that refuses any use lets MFFMTCore's modules import."""
    try:
        import SimpleITK  # noqa: F401
    except ImportError:
        stand_in = types.ModuleType("SimpleITK")

        def refuse(name: str) -> None:
            raise AttributeError(f"SimpleITK is not installed here (SimpleITK.{name} was used)")

        stand_in.__getattr__ = refuse  # type: ignore[attr-defined]
        sys.modules["SimpleITK"] = stand_in


_allow_missing_simpleitk()

import torch  # noqa: E402

from MFFMTCore.files import write_json_atomic  # noqa: E402

#: Recipes compared. ``augment``: "scanner" = ScannerAugment; "lateral" = left-right flips only;
#: ``lesion_free``: share of lesion images turned into lesion-free views (ScannerAugment).
RECIPES: dict[str, dict] = {
    "baseline": {"embed_dim": 512, "mlp_ratio": 3.0, "augment": "lateral"},
    "narrow": {"embed_dim": 256, "mlp_ratio": 2.0, "augment": "lateral"},
    "scanner": {"embed_dim": 256, "mlp_ratio": 2.0, "augment": "scanner"},
    "free": {"embed_dim": 256, "mlp_ratio": 2.0, "augment": "scanner", "lesion_free": 0.15},
}
#: Shared by every recipe: the cpu preset's optimiser and schedule at batch 32.
COMMON = {"optimizer": "adamw", "lr": 1e-3, "weight_decay": 1e-2, "schedule": "cosine", "warmup_epochs": 1.0,
          "batch_size": 32, "grad_clip": 5.0, "lambda_loc": 1.0, "seg_weight": 1.0, "aux_weight": 0.5}
LEFT_OUT = {"no_logiq5": ("scanner", "GE Logiq 5 @10-12MHz"), "no_busi": ("dataset", "BUSI")}


# ----------------------------------------------------------------------------------------- pack
def pack(args: argparse.Namespace) -> None:
    from PIL import Image

    from MFFMTCore.data import MFFMTDataset, busbra_official_folds, group_kfold, make_samples, read_busi
    from MFFMTCore.data.records import birads_index, label_index

    busbra_folds = busbra_official_folds(args.busbra)
    busi = read_busi(args.busi)
    busi_folds = group_kfold(busi, k=len(busbra_folds), seed=0)
    records, folds = [], []
    for fold, (_, val) in enumerate(busbra_folds):
        records += val
        folds += [fold] * len(val)
    for fold, (_, val) in enumerate(busi_folds):
        records += val
        folds += [fold] * len(val)
    dataset = MFFMTDataset(make_samples(records, "frame"), train=False, size=(args.size, args.size))
    jpegs, masks, fields = [], [], {key: [] for key in ("has_mask", "mask_is_box", "label", "birads")}
    for index in range(len(dataset)):
        item = dataset[index]
        grey = np.rint(item["image"][0].numpy() * 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
        jpegs.append(np.frombuffer(buffer.getvalue(), dtype=np.uint8))
        masks.append(np.packbits(item["mask"][0].numpy() > 0.5))
        fields["has_mask"].append(bool(item["has_mask"]))
        fields["mask_is_box"].append(bool(item["mask_is_box"]))
        fields["label"].append(label_index(records[index].label))
        fields["birads"].append(birads_index(records[index].birads))
    meta = [{"id": r.id, "dataset": r.dataset, "scanner": r.scanner or "", "group": r.group_key(),
             "label_name": r.label or ""} for r in records]
    offsets = np.cumsum([0] + [len(j) for j in jpegs])
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.output, jpeg=np.concatenate(jpegs), offsets=offsets, masks=np.stack(masks),
             fold=np.array(folds), size=np.array(args.size), meta=np.frombuffer(json.dumps(meta).encode(), np.uint8),
             **{key: np.array(value) for key, value in fields.items()})
    print(f"packed {len(records)} images into {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB), "
          f"folds {np.bincount(folds).tolist()}")


def load_packed(path: str) -> dict:
    from PIL import Image

    data = np.load(path)
    size = int(data["size"])
    jpeg, offsets = data["jpeg"], data["offsets"]
    images = np.stack([np.asarray(Image.open(io.BytesIO(jpeg[offsets[i]:offsets[i + 1]].tobytes())))
                       for i in range(len(offsets) - 1)])
    masks = np.unpackbits(data["masks"], axis=1, count=size * size).reshape(-1, size, size)
    meta = json.loads(data["meta"].tobytes().decode())
    return {"images": images, "masks": masks, "meta": meta, "fold": data["fold"], "size": size,
            **{key: data[key] for key in ("has_mask", "mask_is_box", "label", "birads")}}


# ------------------------------------------------------------------------------------------ run
def job_list(folds: int, recipes: list[str]) -> list[dict]:
    """Per recipe: one job per fold, one per left-out domain, and the final model on all data."""
    jobs = []
    for recipe in recipes:
        jobs += [{"name": f"{recipe}_fold{fold}", "recipe": recipe, "hold": ["fold", fold]} for fold in range(folds)]
        jobs += [{"name": f"{recipe}_{name}", "recipe": recipe, "hold": list(rule)} for name, rule in LEFT_OUT.items()]
        jobs.append({"name": f"{recipe}_final", "recipe": recipe, "hold": None})
    return jobs


def held_out(data: dict, hold: list | None) -> np.ndarray:
    if hold is None:
        return np.zeros(len(data["meta"]), dtype=bool)
    key, value = hold
    if key == "fold":
        return data["fold"] == value
    return np.array([item[key] == value for item in data["meta"]])


class GpuBatches:
    """Random batches (or the held-out images in order) of the packed data, already on the device."""

    def __init__(self, data: dict, select: np.ndarray, device: torch.device) -> None:
        index = np.flatnonzero(select)
        self.meta = [data["meta"][i] for i in index]
        self.images = torch.from_numpy(data["images"][index]).to(device)
        self.masks = torch.from_numpy(data["masks"][index]).to(device)
        self.tensors = {key: torch.from_numpy(data[key][index]).to(device)
                        for key in ("has_mask", "mask_is_box", "label", "birads")}

    def __len__(self) -> int:
        return len(self.meta)

    def batch(self, index: torch.Tensor) -> dict:
        picked = index.cpu().tolist()
        return {
            "image": self.images[index][:, None].float() / 255.0, "mask": self.masks[index][:, None].float(),
            "has_mask": self.tensors["has_mask"][index], "mask_is_box": self.tensors["mask_is_box"][index],
            "label": self.tensors["label"][index], "aux": {"birads": self.tensors["birads"][index]},
            "id": [self.meta[i]["id"] for i in picked], "dataset": [self.meta[i]["dataset"] for i in picked],
            "scanner": [self.meta[i]["scanner"] for i in picked],
        }

    def in_order(self, size: int):
        for start in range(0, len(self), size):
            yield self.batch(torch.arange(start, min(start + size, len(self)), device=self.images.device))


def train_job(args: argparse.Namespace) -> None:
    """One job in its own process (``run`` starts one per job)."""
    from MFFMTCore.data.augment import ScannerAugment
    from MFFMTCore.evaluation.predictions import predict_rows
    from MFFMTCore.losses import MFFMTLoss
    from MFFMTCore.network import MFFMT
    from MFFMTCore.training.config import TrainConfig
    from MFFMTCore.training.optim import build_optimizer, build_scheduler
    from MFFMTCore.training.trainer import augment_batch, float_output

    job = json.loads(args.job)
    out = Path(args.output)
    recipe = RECIPES[job["recipe"]]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True
    data = load_packed(args.packed)
    hold = held_out(data, job["hold"])
    keep = ~hold
    if args.subset:  # smoke tests: the first N images of each side
        keep &= np.cumsum(keep) <= args.subset
        hold &= np.cumsum(hold) <= args.subset
    train = GpuBatches(data, keep, device)
    val = GpuBatches(data, hold, device) if hold.any() else None
    size = COMMON["batch_size"]
    steps = len(train) // size  # whole batches only: batch normalisation needs no stragglers
    augment = (ScannerAugment(lesion_free=recipe.get("lesion_free", 0.0)) if recipe["augment"] == "scanner" else
               ScannerAugment(crop=0, intensity=0, tgc=0, speckle=0, blur=0, marks=0))
    architecture = {"backbone": "resnet18", "in_channels": 1, "num_classes": 2, "fusion": "mff",
                    "embed_dim": recipe["embed_dim"], "mlp_ratio": recipe["mlp_ratio"],
                    "aux_classes": {"birads": 4}}
    loss_fn = MFFMTLoss(lambda_loc=COMMON["lambda_loc"], seg_weight=COMMON["seg_weight"],
                        aux_weight=COMMON["aux_weight"])

    def fresh(epochs: int):
        torch.manual_seed(args.seed)
        network = MFFMT(**architecture).to(device).to(memory_format=torch.channels_last)
        config = TrainConfig(data=["packed"], output=str(out), epochs=epochs, input_size=data["size"],
                             **{k: v for k, v in COMMON.items() if k in TrainConfig.__dataclass_fields__})
        optimizer = build_optimizer(network, config)
        return network, optimizer, build_scheduler(optimizer, config, steps)

    def step(network, optimizer, scheduler, index: torch.Tensor) -> float:
        batch = augment_batch(augment, train.batch(index))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            output = network(batch["image"].contiguous(memory_format=torch.channels_last))
        parts = loss_fn(float_output(output), batch)
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), COMMON["grad_clip"])
        optimizer.step()
        scheduler.step()
        return parts.total

    # Calibration: the step time with every job running decides the common number of epochs.
    network, optimizer, scheduler = fresh(1)
    network.train()
    for _ in range(3):
        step(network, optimizer, scheduler, torch.randint(0, len(train), (size,), device=device))
    _sync(device)
    started = time.monotonic()
    for _ in range(args.calibration_steps):
        step(network, optimizer, scheduler, torch.randint(0, len(train), (size,), device=device))
    _sync(device)
    seconds = (time.monotonic() - started) / args.calibration_steps
    write_json_atomic(out / "calibration" / f"{job['name']}.json", {"step_s": seconds, "steps": steps})
    plan = out / "epochs.json"
    while not plan.exists():
        time.sleep(0.2)
    epochs, deadline = (json.loads(plan.read_text())[key] for key in ("epochs", "deadline"))

    network, optimizer, scheduler = fresh(epochs)
    history, began = [], time.monotonic()
    generator = torch.Generator(device=device).manual_seed(args.seed)
    for epoch in range(1, epochs + 1):
        network.train()
        order = torch.randperm(len(train), device=device, generator=generator)
        total = torch.zeros((), device=device)
        for s in range(steps):
            total += step(network, optimizer, scheduler, order[s * size:(s + 1) * size]).detach()
        history.append({"epoch": epoch, "loss": float(total) / steps, "elapsed_s": round(time.monotonic() - began, 1)})
        last_epoch_s = history[-1]["elapsed_s"] - (history[-2]["elapsed_s"] if len(history) > 1 else 0.0)
        if epoch < epochs and time.time() + last_epoch_s > deadline:
            break  # the measured pace was too hopeful: stop in time, and say so in the result
    result = {"job": job, "recipe": {**recipe, **COMMON}, "epochs": epochs, "epochs_done": len(history),
              "history": history,
              "train_images": len(train), "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}
    if val is not None:
        network = network.to(memory_format=torch.contiguous_format)
        rows, _ = predict_rows(network, val.in_order(64), device)
        result["rows"] = rows
    write_json_atomic(out / "results" / f"{job['name']}.json", result)
    if args.save_model:
        from safetensors.torch import save_file

        tensors = {name: tensor.detach().cpu().contiguous().half() if tensor.is_floating_point() else
                   tensor.detach().cpu().contiguous() for name, tensor in network.state_dict().items()}
        save_file(tensors, str(out / f"{job['name']}.safetensors"), metadata={"architecture": json.dumps(architecture)})
    print(f"{job['name']}: {epochs} epochs in {time.monotonic() - began:.0f} s", flush=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run(args: argparse.Namespace) -> None:
    """Start every job, set the common epoch count from their calibration, wait for them."""
    began = time.monotonic()
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    folds = int(np.load(args.packed)["fold"].max()) + 1
    jobs = [job for job in job_list(folds, args.recipes) if not args.only or job["name"] in args.only]
    processes = []
    for job in jobs:
        command = [sys.executable, __file__, "job", "--packed", args.packed, "--output", str(out), "--job",
                   json.dumps(job), "--calibration-steps", str(args.calibration_steps), "--subset", str(args.subset)]
        if job["name"] in args.save:
            command.append("--save-model")
        log = open(out / f"{job['name']}.log", "w")  # closed when the process ends
        processes.append((job, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT), log))
    calibration = out / "calibration"
    while len(list(calibration.glob("*.json")) if calibration.exists() else []) < len(jobs):
        if any(process.poll() not in (None, 0) for _, process, _ in processes):
            break
        time.sleep(0.5)
    measured = [json.loads(path.read_text()) for path in calibration.glob("*.json")]
    left = args.budget_s - (time.monotonic() - began) - args.reserve_s
    epoch_s = max(item["step_s"] * item["steps"] for item in measured) if measured else math.inf
    epochs = int(max(args.min_epochs, min(args.max_epochs, 0.9 * left // epoch_s)))
    write_json_atomic(out / "epochs.json", {"epochs": epochs, "epoch_s": epoch_s, "left_s": left,
                                      "deadline": time.time() + left,
                                      "calibration": {p.stem: json.loads(p.read_text()) for p in calibration.glob("*.json")}})
    print(f"{len(jobs)} jobs; epoch takes {epoch_s:.1f} s with all running; {epochs} epochs in {left:.0f} s", flush=True)
    failed = []
    for job, process, log in processes:
        try:
            code = process.wait(timeout=max(1.0, args.budget_s + 30 - (time.monotonic() - began)))
        except subprocess.TimeoutExpired:
            process.kill()
            code = "killed at the budget's end"
        if code != 0:
            failed.append(f"{job['name']} ({code})")
        log.close()
    print(f"done in {time.monotonic() - began:.0f} s; failed: {failed or 'none'}", flush=True)


# --------------------------------------------------------------------------------------- report
HEADLINE = ("auc", "accuracy", "sensitivity", "specificity", "dice")
IN_DOMAIN = {"no_logiq5": ("scanners", "GE Logiq 5 @10-12MHz"), "no_busi": ("datasets", "BUSI")}


def _mean_sd(values: list[float]) -> dict:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(np.mean(values)), "sd": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "n": len(values)}


def _fmt(summary: dict) -> str:
    return "n/a" if summary["mean"] is None else f"{summary['mean']:.3f} ± {summary['sd']:.3f}"


def _subsets(report: dict) -> dict[str, dict]:
    subsets = {"all": report["overall"]}
    subsets.update({name: values for name, values in report["datasets"].items()})
    subsets.update({name: values for name, values in report.get("scanners", {}).items()})
    return subsets


def recipe_report(results: dict[str, dict], recipe: str, min_kept: float) -> dict:
    """Cross-validation, left-out domains, calibration and lesion rule of one recipe."""
    from MFFMTCore.evaluation.metrics import grouped_report
    from MFFMTCore.evaluation.model_fit import fit_calibration, frame_scores_from_rows

    folds = sorted(name for name in results if name.startswith(f"{recipe}_fold"))
    if not folds:
        return {}
    per_fold = {name: _subsets(grouped_report(results[name]["rows"])) for name in folds}
    subsets = sorted({key for values in per_fold.values() for key in values})
    crossval = {subset: {metric: _mean_sd([per_fold[f][subset].get(metric) for f in folds if subset in per_fold[f]])
                         for metric in HEADLINE} for subset in subsets}
    out = {"folds": len(folds), "epochs": results[folds[0]]["epochs_done"], "crossval": crossval,
           "per_fold": {f: {s: {m: per_fold[f][s].get(m) for m in HEADLINE} for s in per_fold[f]} for f in folds}}

    left_out = {}
    for name, (kind, domain) in IN_DOMAIN.items():
        job = f"{recipe}_{name}"
        if job not in results:
            continue
        unseen = grouped_report(results[job]["rows"])[kind][domain]
        seen = crossval[domain]
        left_out[name] = {"domain": domain, "unseen": {m: unseen.get(m) for m in HEADLINE},
                          "in_domain": {m: seen[m]["mean"] for m in HEADLINE},
                          "auc_drop": seen["auc"]["mean"] - unseen["auc"],
                          "sensitivity_change": unseen["sensitivity"] - seen["sensitivity"]["mean"]}
    out["left_out"] = left_out

    # Temperature and lesion rule: mffmt train's own fitting (MFFMTCore.evaluation.model_fit) on the
    # out-of-fold frames, each fold one group, so the figures are nested by fold; the values from all.
    size = results[folds[0]].get("input_px", 224 * 224)
    scores = [score for f in folds for score in frame_scores_from_rows(results[f]["rows"], size, lambda row, f=f: f)]
    parts = fit_calibration(scores, min_kept=min_kept)
    out["calibration"] = parts["temperature"].to_json()
    out["lesion_decision"] = parts["lesion_decision"].to_json()
    return out


def plot_reliability_pair(reports: dict[str, dict], path: Path) -> None:
    from MFFMTCore.evaluation.plots import plot_reliability

    curves = {}
    for recipe, values in reports.items():
        calibration, figures = values["calibration"], values["calibration"]["figures"]
        curves[f"{recipe}, T = 1 (ECE {figures['ece_before']:.3f})"] = figures["bins_before"]
        curves[f"{recipe}, T = {calibration['value']:.2f} (ECE {figures['ece_cross_fitted']:.3f})"] = \
            figures["bins_cross_fitted"]
    plot_reliability(curves, path)


def package(args: argparse.Namespace) -> None:
    """The final model of a recipe as a model file: weights, calibration, lesion rule and figures."""
    from safetensors import safe_open

    from MFFMTCore.data import read_busbra, read_busi, summarize
    from MFFMTCore.model_file import ModelInfo, load_model, save_model
    from MFFMTCore.network import MFFMT

    reports = json.loads(Path(args.report).read_text())
    figures = reports[args.recipe]
    with safe_open(args.model, framework="pt") as handle:
        architecture = json.loads(handle.metadata()["architecture"])
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}
    network = MFFMT(**architecture)
    reference = network.state_dict()
    network.load_state_dict({name: tensor.to(reference[name].dtype) for name, tensor in tensors.items()})
    final = json.loads(Path(args.final_result).read_text())
    records = read_busi(args.busi) + read_busbra(args.busbra)
    info = ModelInfo(
        architecture=network.architecture, class_names=["benign", "malignant"],
        input_size=[int(final.get("input_size", 224))] * 2, intensity="minmax", threshold=0.5,
        temperature=figures["calibration"]["value"], lesion_decision=figures["lesion_decision"]["value"],
        fitted={"temperature": figures["calibration"], "lesion_decision": figures["lesion_decision"]},
        name="MFFMT18",
        training={"data": ["BUSI", "BUS-BRA (GE Logiq 5 and 7)"],
                  "data_summary": {"train": summarize(records)}, "recipe": {**final["recipe"], "recipe": args.recipe},
                  "epochs": final["epochs_done"], "images": final["train_images"], "device": final["device"],
                  "how": "experiments/crossval.py run (all images, last epoch; no model selection)"},
        validation={"method": f"{figures['folds']}-fold cross-validation (BUS-BRA official patient folds, BUSI by "
                              "near-duplicate group), same recipe, last epoch; mean and sd over folds",
                    "crossval": figures["crossval"], "left_out": figures["left_out"]},
    )
    save_model(args.output, network, info, half=True)
    loaded, _ = load_model(args.output)
    drift = max(float((a.float() - b.float()).abs().max()) for a, b in
                zip(loaded.state_dict().values(), network.state_dict().values()) if a.is_floating_point())
    print(f"wrote {args.output} ({os.path.getsize(args.output) / 2**20:.1f} MiB; float16, largest weight change "
          f"{drift:.2e}); temperature {info.temperature}, lesion rule {info.lesion_decision}")


def report(args: argparse.Namespace) -> None:
    """Tables (markdown and JSON) and the reliability diagram from ``run``'s results folders."""
    results = {}
    for folder in args.results:
        for path in sorted(Path(folder, "results").glob("*.json")):
            results[path.stem] = json.loads(path.read_text())
    recipes = [recipe for recipe in RECIPES if any(name.startswith(f"{recipe}_fold") for name in results)]
    reports = {recipe: recipe_report(results, recipe, args.min_kept) for recipe in recipes}
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "crossval.json").write_text(json.dumps(reports, indent=1, allow_nan=False) + "\n")
    plot_reliability_pair({recipe: reports[recipe] for recipe in args.calibration_plot if recipe in reports},
                          out / "reliability.png")
    lines = ["| recipe | subset | " + " | ".join(HEADLINE) + " |", "|---" * (len(HEADLINE) + 2) + "|"]
    for recipe, values in reports.items():
        for subset, metrics in values["crossval"].items():
            lines.append(f"| {recipe} | {subset} | " + " | ".join(_fmt(metrics[m]) for m in HEADLINE) + " |")
    lines += ["", "| recipe | left out | AUC unseen | AUC in-domain | drop | sensitivity unseen | in-domain | Dice unseen |",
              "|---|---|---|---|---|---|---|---|"]
    for recipe, values in reports.items():
        for item in values["left_out"].values():
            lines.append(f"| {recipe} | {item['domain']} | {item['unseen']['auc']:.3f} | {item['in_domain']['auc']:.3f} | "
                         f"{item['auc_drop']:+.3f} | {item['unseen']['sensitivity']:.3f} | "
                         f"{item['in_domain']['sensitivity']:.3f} | {item['unseen']['dice']:.3f} |")
    lines += ["", "| recipe | temperature | ECE before | ECE after (nested by fold) | lesion rule | lesion frames kept | "
              "lesion-free flagged (before: any pixel) |", "|---|---|---|---|---|---|---|"]
    for recipe, values in reports.items():
        cal, rule = values["calibration"], values["lesion_decision"]
        lines.append(f"| {recipe} | {cal['value']:.2f} | {cal['figures']['ece_before']:.3f} | "
                     f"{cal['figures']['ece_cross_fitted']:.3f} | "
                     f"peak >= {rule['value']['min_peak']:.3f}, area >= {rule['value']['min_area_fraction']:.4f} | "
                     f"{rule['figures']['cross_fitted']['lesion_frames_kept']:.3f} | "
                     f"{rule['figures']['cross_fitted']['lesion_free_flagged']:.3f} "
                     f"({rule['figures']['before']['lesion_free_flagged']:.3f}) |")
    (out / "crossval.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--busi", required=True)
    p.add_argument("--busbra", required=True)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--output", required=True)
    p = sub.add_parser("run")
    p.add_argument("--packed", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--budget-s", type=float, default=420, help="wall time for all jobs, calibration included")
    p.add_argument("--reserve-s", type=float, default=35, help="kept for scoring and writing at the end")
    p.add_argument("--min-epochs", type=int, default=4)
    p.add_argument("--max-epochs", type=int, default=80)
    p.add_argument("--calibration-steps", type=int, default=10)
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--only", nargs="*", default=[], help="run only these jobs")
    p.add_argument("--subset", type=int, default=0, help="smoke test: at most N images per side")
    p.add_argument("--save", nargs="*", default=["free_final", "scanner_final", "narrow_final"], help="jobs whose model to keep")
    p = sub.add_parser("job")
    p.add_argument("--packed", required=True)
    p.add_argument("--output", required=True)
    p.add_argument("--job", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--calibration-steps", type=int, default=10)
    p.add_argument("--save-model", action="store_true")
    p.add_argument("--subset", type=int, default=0)
    p = sub.add_parser("package")
    p.add_argument("--model", required=True, help="a final job's .safetensors (from `run`)")
    p.add_argument("--final-result", required=True, help="that job's results/<job>.json")
    p.add_argument("--report", required=True, help="crossval.json from `report`")
    p.add_argument("--recipe", default="scanner")
    p.add_argument("--busi", required=True)
    p.add_argument("--busbra", required=True)
    p.add_argument("--output", required=True)
    p = sub.add_parser("report")
    p.add_argument("--results", required=True, nargs="+", help="output folders of `run`")
    p.add_argument("--output", required=True)
    p.add_argument("--min-kept", type=float, default=0.95, help="share of lesion frames the lesion rule must keep")
    p.add_argument("--calibration-plot", nargs="*", default=["scanner", "free"])
    args = parser.parse_args()
    {"pack": pack, "run": run, "job": train_job, "report": report, "package": package}[args.command](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
