"""The MFFMT trainer: epochs, validation, best model, checkpoints, progress, cancel and resume.

One :class:`Trainer` runs one training run in its run folder ``RUN_DIR``:

- ``model.safetensors``: the best model so far (by validation AUC), in the model-file format with a
  complete :class:`MFFMTCore.model_file.ModelInfo`;
- ``checkpoint.pt``: the state after the last finished epoch (model, optimiser, scheduler, best
  model's scores, history, random generators), read with ``torch.load(weights_only=True)``;
- ``progress.jsonl``, ``history.json``, ``training_curves.png``, ``split.json``, ``config.json``.

Every file is written atomically, so a hard kill at any moment leaves the previous version intact.
SIGINT, SIGTERM or the stop file stop training before the next step: the unfinished epoch is
dropped (``--resume`` redoes it) and the files stay as the last finished epoch left them.

Selection of the best model: the highest validation AUC; equal or undefined AUCs (a validation set
without both classes) fall back to the higher validation Dice, then the lower validation loss.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.data import BIRADS_CLASSES, MFFMTDataset, make_samples, summarize
from MFFMTCore.data.augment import ScannerAugment
from MFFMTCore.data.records import DatasetError, SampleRecord, label_index
from MFFMTCore.data.split_file import write_split
from MFFMTCore.errors import MFFMTError
from MFFMTCore.evaluation.metrics import grouped_report
from MFFMTCore.evaluation.plots import plot_training_curves
from MFFMTCore.evaluation.predictions import predict_rows
from MFFMTCore.files import remove_temporaries, write_json_atomic, write_text_atomic
from MFFMTCore.folder_lock import FolderLock
from MFFMTCore.losses import MFFMTLoss
from MFFMTCore.model_file import ModelInfo, load_model, save_model
from MFFMTCore.network import MFFMT, MFFMTOutput, load_torchvision_weights
from MFFMTCore.training.checkpoint import (
    capture_rng_state,
    load_checkpoint,
    restore_rng_state,
    save_checkpoint,
)
from MFFMTCore.training.config import TrainConfig
from MFFMTCore.training.datasplit import plan_split, restore_split
from MFFMTCore.training.distributed import DistributedContext, available_cores
from MFFMTCore.training.optim import build_optimizer, build_scheduler
from MFFMTCore.training.progress import EtaClock, ProgressLog, epoch_bar

MODEL_NAME = "model.safetensors"
CHECKPOINT_NAME = "checkpoint.pt"
PROGRESS_NAME = "progress.jsonl"
#: The files that show a folder holds an earlier run, and that overwrite removes. The progress file is
#: not one: alone it may be a run that stopped at a data error, and a new run appends to it.
RUN_FILES = (MODEL_NAME, CHECKPOINT_NAME, "config.json", "split.json", "history.json", "training_curves.png")
#: Fewest training images of each class (benign, malignant) a run starts with.
MIN_CLASS_SAMPLES = 2
LOSS_KEYS = ("loss", "loss_cls", "loss_loc", "loss_seg", "loss_aux")


def native_bf16(device: torch.device) -> bool:
    """True when ``device`` computes bfloat16 natively (else bf16 autocast would be slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    checks = (getattr(torch.cpu, "_is_avx512_bf16_supported", None), getattr(torch.cpu, "_is_amx_tile_supported", None))
    return any(check() for check in checks if check is not None)


def float_output(output: MFFMTOutput) -> MFFMTOutput:
    """The network's output in float32, so that the loss is computed in full precision."""
    return MFFMTOutput(output.class_logits.float(), output.mask_logits.float(), output.coarse_mask_logits.float(),
                       {name: logits.float() for name, logits in output.aux_logits.items()})


def augment_batch(augment: ScannerAugment, batch: dict[str, Any]) -> dict[str, Any]:
    """``batch`` with ``augment`` applied to its images and masks (on the images' device); lesion-free
    views lose their class and auxiliary labels (no lesion in view, nothing to classify)."""
    device = batch["image"].device
    images, masks, free = augment(batch["image"], batch["mask"].to(device), batch["has_mask"])
    def unlabel(labels: torch.Tensor) -> torch.Tensor:
        return torch.where(free.to(labels.device), torch.full_like(labels, -1), labels)

    aux = {name: unlabel(labels) for name, labels in (batch.get("aux") or {}).items()}
    return {**batch, "image": images, "mask": masks, "label": unlabel(batch["label"]), "aux": aux}


def selection_score(metrics: dict[str, float]) -> tuple[float, float, float]:
    """Orderable score of a validation result: (AUC, Dice, -loss), undefined values lowest."""

    def finite(value: float | None, sign: float = 1.0) -> float:
        return sign * value if value is not None and math.isfinite(value) else -math.inf

    return finite(metrics.get("val_auc")), finite(metrics.get("val_dice")), finite(metrics.get("val_loss"), -1.0)


class StopRequest:
    """Set by SIGINT/SIGTERM or by the appearance of the stop file; a second signal interrupts at once."""

    def __init__(self, stop_file: Path, echo: Callable[[str], None]) -> None:
        self.stop_file = stop_file
        self.echo = echo
        self.reason: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if self.stop_file.exists():
            self.echo(f"removing a stop file left by an earlier run: {self.stop_file}")
            self.stop_file.unlink(missing_ok=True)
        try:
            for number in (signal.SIGINT, signal.SIGTERM):
                self._previous[number] = signal.signal(number, self._handle)
        except ValueError:  # not the main thread (e.g. a GUI worker): the stop file still works
            self._previous.clear()
        return self

    def __exit__(self, *exc_info: object) -> None:
        for number, handler in self._previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame: FrameType | None) -> None:
        if self.reason is not None:
            raise KeyboardInterrupt
        self.reason = f"received {signal.Signals(number).name}"
        self.echo(f"{self.reason}: stopping at the next safe point (send it again to stop at once)")

    def requested(self) -> bool:
        if self.reason is None and self.stop_file.exists():
            self.reason = f"stop file {self.stop_file} appeared"
            self.stop_file.unlink(missing_ok=True)
        return self.reason is not None


class Trainer:
    """Train an MFFMT network as ``config`` says.

    Args:
        config: the run's configuration (its preset values are filled in here).
        resume: continue the run in ``config.output`` from its ``checkpoint.pt``.
        overwrite: start a new run in a folder holding an earlier one, deleting its files
            (:data:`RUN_FILES`) once the new run's data has passed its checks. Without it (or
            ``resume``) such a folder is refused.
        echo: where human-readable messages go (rank 0 only).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, echo: Callable[[str], None] = tqdm.write,
                 overwrite: bool = False) -> None:
        if resume and overwrite:
            raise MFFMTError("--overwrite", "cannot be combined with --resume")
        self.config = config.resolved()
        self.resume = resume
        self.overwrite = overwrite
        self.run_dir = Path(self.config.output)
        self.context = DistributedContext(self.config.device)
        self._echo = echo
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"score": None, "epoch": None}
        self.start_epoch = 0
        self.global_step = 0

    # ----------------------------------------------------------------- helpers
    def echo(self, message: str) -> None:
        if self.context.is_main:
            self._echo(message)

    def _threads(self) -> int:
        if self.config.threads:
            return self.config.threads
        return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    # ------------------------------------------------------------------ set-up
    def _check_run_dir(self) -> None:
        """Refuse a folder that is a file, or that holds an earlier run (unless resume or overwrite)."""
        checkpoint = self.run_dir / CHECKPOINT_NAME
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise MFFMTError(self.run_dir, "is a file, not a folder; --output must name a run folder")
        if self.resume and not checkpoint.is_file():
            raise MFFMTError(checkpoint, "checkpoint not found, nothing to resume (start a new run without --resume)")
        earlier = [name for name in RUN_FILES if (self.run_dir / name).exists()]
        # Every process looks before any writes: the collective in any() waits for all of them.
        if self.context.any(bool(earlier) and not self.resume and not self.overwrite):
            raise MFFMTError(self.run_dir, f"already holds a training run ({', '.join(earlier)}); continue it "
                                           "with --resume, replace it with --overwrite, or choose another --output")

    def _check_classes(self, train: list[SampleRecord], validation: list[SampleRecord]) -> None:
        """Refuse data that cannot teach or measure benign against malignant, before any slow step."""
        for part, records, least in (("training", train, MIN_CLASS_SAMPLES), ("validation", validation, 1)):
            counts = {name: sum(label_index(record.label) == index for record in records)
                      for name, index in (("benign", 0), ("malignant", 1))}
            if part == "validation" and not records:
                continue  # no validation part was asked for (--val-fraction 0)
            if min(counts.values()) < least:
                raise DatasetError(", ".join(self.config.data),
                                   f"the {part} part holds {counts['benign']} benign and {counts['malignant']} "
                                   f"malignant image(s); at least {least} of each are needed "
                                   "(a model trained or validated on one class cannot be trusted)")

    def _prepare_data(self) -> None:
        config = self.config
        split_path = self.run_dir / "split.json"
        if self.resume:
            train, val, self.split = restore_split(config.data, split_path)
        else:
            train, val, self.split = plan_split(config.data, config.val_fraction, config.seed)
        self._check_classes(train, val)
        if self.context.is_main:
            if self.overwrite:  # only now that the new run's data is known to be usable
                for name in RUN_FILES:
                    (self.run_dir / name).unlink(missing_ok=True)
            write_text_atomic(self.run_dir / "config.json", config.to_json() + "\n")
        self.train_records, self.val_records = train, val
        size = (config.input_size, config.input_size)
        show = config.progress_bar and self.context.is_main
        self.train_set = MFFMTDataset(make_samples(train, config.mode, config.margin, progress=show), train=True,
                                      size=size, augment=config.augment)
        self.train_set.build_cache(progress=show)
        self.val_set = MFFMTDataset(make_samples(val, config.mode, config.margin, progress=show), train=False,
                                    size=size) if self.context.is_main else None
        if self.val_set is not None:
            self.val_set.build_cache(progress=show)
        if self.context.is_main and not self.resume:
            write_split(split_path, self.split)

    def _loaders(self) -> None:
        config, context = self.config, self.context
        per_rank = math.ceil(len(self.train_set) / context.world_size)
        if per_rank < 2:
            raise DatasetError(", ".join(config.data), f"too few training samples ({len(self.train_set)}) for "
                                                       f"{context.world_size} process(es); batch normalisation "
                                                       "needs 2 per step")
        # A last batch of one sample would break batch normalisation: drop only that case.
        drop_last = per_rank % config.batch_size == 1
        self.sampler = (DistributedSampler(self.train_set, context.world_size, context.rank, shuffle=True,
                                           seed=config.seed, drop_last=False) if context.enabled else None)
        pin = context.device.type == "cuda"
        self.train_loader = DataLoader(
            self.train_set, batch_size=config.batch_size, shuffle=self.sampler is None, sampler=self.sampler,
            num_workers=config.num_workers, drop_last=drop_last, pin_memory=pin,
            persistent_workers=config.num_workers > 0)
        self.val_loader = None if self.val_set is None else DataLoader(
            self.val_set, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers,
            pin_memory=pin, persistent_workers=config.num_workers > 0)
        self.steps_per_epoch = len(self.train_loader)

    def _aux_classes(self) -> dict[str, int]:
        if self.config.aux == "none" or not any(record.birads for record in self.train_records):
            return {}
        return {"birads": len(BIRADS_CLASSES)}

    def _build_model(self, checkpoint: dict[str, Any] | None) -> None:
        config = self.config
        source = load_model(config.init_model)[0] if config.init_model and checkpoint is None else None
        if checkpoint is not None:
            architecture = checkpoint["architecture"]
        elif source is not None:
            architecture = {**source.architecture, "aux_classes": self._aux_classes()}
        else:
            architecture = config.architecture(self._aux_classes())
        torch.manual_seed(config.seed)
        model = MFFMT(**architecture)
        self.init_message = "random initialisation"
        if checkpoint is not None:
            model.load_state_dict(checkpoint["model"])
        elif source is not None:
            self.init_message = self._load_init_weights(model, source)
        elif config.pretrained_backbone:
            load_torchvision_weights(model.backbone, config.pretrained_backbone)
            self.init_message = f"backbone initialised from {config.pretrained_backbone}"
        self.network = model.to(self.context.device)
        self.model = (DistributedDataParallel(self.network, device_ids=[self.context.device.index]
                                              if self.context.device.type == "cuda" else None)
                      if self.context.enabled else self.network)

    def _load_init_weights(self, model: MFFMT, source: MFFMT) -> str:
        """Copy every tensor of ``source`` that fits (new auxiliary heads start fresh); say how many."""
        reference = model.state_dict()
        fitting = {name: tensor for name, tensor in source.state_dict().items()
                   if name in reference and reference[name].shape == tensor.shape}
        model.load_state_dict(fitting, strict=False)
        return f"{len(fitting)} of {len(reference)} tensors initialised from {self.config.init_model}"

    # ------------------------------------------------------------------- state
    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        return {
            "epoch": epoch, "global_step": self.global_step, "architecture": self.network.architecture,
            "model": self.network.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": {key: value for key, value in self.best.items() if key != "score"},
            "history": self.history, "rng": capture_rng_state(), "config": asdict(self.config),
        }

    def _restore(self, checkpoint: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        self.scheduler.load_state_dict(checkpoint["scheduler"])
        self.start_epoch = int(checkpoint["epoch"])
        self.global_step = int(checkpoint["global_step"])
        self.history = list(checkpoint["history"])
        self.best = dict(checkpoint["best"])
        self.best["score"] = selection_score(self.best["metrics"]) if self.best.get("metrics") else None
        restore_rng_state(checkpoint["rng"])

    def model_info(self, epoch: int, report: dict[str, Any], val_loss: float) -> ModelInfo:
        """The metadata written with the best model."""
        config = self.config
        recipe = {key: value for key, value in asdict(config).items()
                  if key not in ("data", "output", "stop_file", "progress_bar", "num_workers", "threads")}
        backbone = self.network.architecture["backbone"]
        return ModelInfo(
            architecture=self.network.architecture,
            class_names=["benign", "malignant"],
            input_size=[config.input_size, config.input_size],
            intensity="minmax",
            threshold=0.5,
            name=f"MFFMT{backbone.removeprefix('resnet')}",
            training=json_safe({
                "data": [str(path) for path in config.data],
                "data_summary": {"train": summarize(self.train_records), "validation": summarize(self.val_records)},
                "recipe": recipe,
                "split": {key: value for key, value in self.split.items() if key not in ("train", "validation")},
                "samples": {"train": len(self.train_set), "validation": len(self.val_set)},
                "epoch": epoch, "epochs": config.epochs, "processes": self.context.world_size,
                "precision": self.precision,
            }),
            validation=json_safe({**report, "epoch": epoch, "loss": val_loss}),
        )

    # -------------------------------------------------------------- the loops
    def _train_epoch(self, epoch: int, stop: StopRequest, log: ProgressLog, eta: EtaClock) -> dict[str, float] | None:
        """One epoch of training; the mean loss parts, or None when a stop was requested."""
        config, context = self.config, self.context
        self.model.train()
        if self.sampler is not None:
            self.sampler.set_epoch(epoch)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        bar = epoch_bar(epoch, config.epochs, self.steps_per_epoch, config.progress_bar and context.is_main)
        try:
            for step, batch in enumerate(self.train_loader, start=1):
                images = batch["image"].to(context.device, non_blocking=True)
                if self.batch_augment is not None:
                    batch = augment_batch(self.batch_augment, {**batch, "image": images})
                    images = batch["image"]
                with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    output = self.model(images)
                parts = self.loss_fn(float_output(output), batch)
                self.optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.network.parameters(), config.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.global_step += 1
                # One collective per step carries the stop flag and the loss parts of every process.
                reduced = context.sum([float(stop.requested()), *(float(value.detach()) for value in parts)])
                values = dict(zip(LOSS_KEYS, (value / context.world_size for value in reduced[1:])))
                for key, value in values.items():
                    sums[key] += value
                eta.update(self.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
                if context.is_main:
                    log.event("step", epoch=epoch, epochs=config.epochs, step=step, steps=self.steps_per_epoch,
                              lr=self.scheduler.get_last_lr()[0], eta_s=eta.eta_s(), **values)
                if reduced[0] > 0:
                    return None
        finally:
            bar.close()
        return {key: value / max(self.steps_per_epoch, 1) for key, value in sums.items()}

    def _validate(self, stop: StopRequest) -> tuple[dict[str, Any], float, dict[str, float]] | None:
        """Validation on rank 0: (grouped report, loss, headline metrics), or None when stopped."""
        rows, val_loss = predict_rows(self.network, self.val_loader, self.context.device, threshold=0.5,
                                      loss_fn=self.loss_fn, should_stop=stop.requested)
        if stop.requested():
            return None
        report = grouped_report(rows)
        overall = report["overall"]
        headline = {"val_loss": val_loss, "val_auc": overall["auc"], "val_dice": overall["dice"],
                    "val_accuracy": overall["accuracy"], "val_sensitivity": overall["sensitivity"],
                    "val_specificity": overall["specificity"], "val_false_lesion_rate": overall["false_lesion_rate"]}
        if "birads_accuracy" in overall:
            headline["val_birads_accuracy"] = overall["birads_accuracy"]
        return report, val_loss, headline

    def _finish_epoch(self, epoch: int, train_means: dict[str, float], validation: tuple, seconds: float,
                      log: ProgressLog, eta: EtaClock) -> None:
        """Rank 0: keep the best model, write history, curves and the checkpoint."""
        report, val_loss, headline = validation
        entry = {"epoch": epoch, "lr": self.scheduler.get_last_lr()[0], **train_means, **headline,
                 "val_datasets": {name: {"auc": values["auc"], "dice": values["dice"]}
                                  for name, values in report["datasets"].items()},
                 "time_s": round(seconds, 1)}
        self.history.append(json_safe(entry))
        score = selection_score(headline)
        improved = self.best["score"] is None or score > tuple(self.best["score"])
        if improved:
            save_model(self.run_dir / MODEL_NAME, self.network, self.model_info(epoch, report, val_loss))
            self.best = {"score": score, "epoch": epoch, "metrics": json_safe(headline)}
        write_json_atomic(self.run_dir / "history.json", self.history)
        plot_training_curves(self.history, self.run_dir / "training_curves.png")
        save_checkpoint(self.run_dir / CHECKPOINT_NAME, self._checkpoint_state(epoch))
        best_auc = self.best["metrics"].get("val_auc")
        message = (f"epoch {epoch}/{self.config.epochs}: loss {train_means['loss']:.4f}, "
                   f"validation AUC {_fmt(headline['val_auc'])}, Dice {_fmt(headline['val_dice'])}, "
                   f"accuracy {_fmt(headline['val_accuracy'])} ({seconds:.0f} s)"
                   + (" - best so far, model saved" if improved else ""))
        self.echo(message)
        log.event("epoch", epoch=epoch, epochs=self.config.epochs, step=self.steps_per_epoch,
                  steps=self.steps_per_epoch, **train_means, **headline, best_auc=best_auc,
                  best_epoch=self.best["epoch"], eta_s=eta.eta_s(), message=message)

    # --------------------------------------------------------------------- run
    def run(self) -> str:
        """Train until the last epoch or a stop request.

        Returns:
            ``"done"`` or ``"cancelled"``.
        """
        config, context = self.config, self.context
        lock = FolderLock(self.run_dir, "mffmt train")
        try:
            self._check_run_dir()
            problem: Exception | None = None
            if context.is_main:
                try:
                    lock.acquire()
                    remove_temporaries(self.run_dir)  # of a save that a kill interrupted
                except (MFFMTError, OSError) as error:
                    problem = error
            if context.any(problem is not None):  # every process stops, not only the one that saw it
                raise problem or MFFMTError(self.run_dir, "the main process cannot use this run folder")
        except BaseException:
            lock.release()
            context.close()
            raise
        torch.set_num_threads(self._threads())
        log = ProgressLog(self.run_dir / PROGRESS_NAME if context.is_main else None)
        stop_file = Path(config.stop_file) if config.stop_file else self.run_dir / "STOP"
        try:
            with StopRequest(stop_file, self.echo) as stop:
                return self._run(stop, log)
        except BaseException as error:
            log.event("error", message=f"{type(error).__name__}: {error}")
            raise
        finally:
            log.close()
            lock.release()
            context.close()

    def _run(self, stop: StopRequest, log: ProgressLog) -> str:
        config, context = self.config, self.context
        checkpoint = load_checkpoint(self.run_dir / CHECKPOINT_NAME) if self.resume else None
        self._prepare_data()
        self._loaders()
        self._build_model(checkpoint)
        self.loss_fn = MFFMTLoss(config.lambda_loc, config.seg_weight, config.aux_weight)
        self.batch_augment = ScannerAugment() if config.augment == "scanner" else None
        self.precision = config.precision
        if self.precision == "auto":
            self.precision = "bf16" if native_bf16(context.device) else "fp32"
        self.optimizer = build_optimizer(self.network, config)
        self.scheduler = build_scheduler(self.optimizer, config, self.steps_per_epoch)
        if checkpoint is not None:
            self._restore(checkpoint)
            if context.rank > 0:  # the checkpoint holds rank 0's generators: keep the others' augmentation distinct
                torch.manual_seed(config.seed + 1000 * context.rank + self.start_epoch)
            message = f"resumed from epoch {self.start_epoch} of {config.epochs} ({self.run_dir / CHECKPOINT_NAME})"
            self.echo(message)
            log.event("resumed", epoch=self.start_epoch, epochs=config.epochs, message=message,
                      best_auc=(self.best.get("metrics") or {}).get("val_auc"))
        else:
            torch.manual_seed(config.seed + 1000 * context.rank)
            message = (f"training {self.network.architecture['backbone']} on {len(self.train_set)} samples, "
                       f"validating on {len(self.val_records)} images; {config.epochs} epochs of "
                       f"{self.steps_per_epoch} steps, {self._threads()} thread(s), {context.world_size} process(es), "
                       f"{self.precision}; "
                       f"{self.init_message}")
            self.echo(message)
            log.event("start", epoch=0, epochs=config.epochs, steps=self.steps_per_epoch, message=message)
        eta = EtaClock(config.epochs * self.steps_per_epoch, self.start_epoch * self.steps_per_epoch)
        for epoch in range(self.start_epoch + 1, config.epochs + 1):
            started = time.monotonic()
            train_means = self._train_epoch(epoch, stop, log, eta)
            validation = None
            if train_means is not None and context.is_main:
                validation = self._validate(stop)
                if validation is not None:
                    self._finish_epoch(epoch, train_means, validation, time.monotonic() - started, log, eta)
            # Rank 0 decides for everyone whether the epoch completed.
            if context.any(train_means is None or (context.is_main and validation is None)):
                return self._cancelled(stop, epoch, log)
        best = self.best.get("metrics") or {}
        message = (f"finished {config.epochs} epochs; best model from epoch {self.best['epoch']} "
                   f"(validation AUC {_fmt(best.get('val_auc'))}, Dice {_fmt(best.get('val_dice'))}) "
                   f"in {self.run_dir / MODEL_NAME}")
        self.echo(message)
        log.event("done", epoch=config.epochs, epochs=config.epochs, best_auc=best.get("val_auc"),
                  best_epoch=self.best["epoch"], message=message)
        return "done"

    def _cancelled(self, stop: StopRequest, epoch: int, log: ProgressLog) -> str:
        last = epoch - 1
        kept = (f"the checkpoint of epoch {last} and the best model (epoch {self.best['epoch']}) are intact; "
                "continue with --resume" if last > 0 else
                "no epoch had finished, so nothing was saved; start the run again")
        message = f"cancelled during epoch {epoch} ({stop.reason or 'another process stopped'}); {kept}"
        self.echo(message)
        log.event("cancelled", epoch=last, epochs=self.config.epochs, message=message,
                  best_auc=(self.best.get("metrics") or {}).get("val_auc"))
        return "cancelled"


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None and math.isfinite(value) else "n/a"

