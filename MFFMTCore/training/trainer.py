"""The MFFMT trainer: epochs, validation, best model, checkpoints, progress, cancel and resume.

One :class:`Trainer` runs one training run in its run folder ``RUN_DIR``
(:class:`~MFFMTCore.base.run_folder.RunFolder` names and describes its files): the best model so far
(by validation AUC), the checkpoint of the last finished epoch (model, optimiser, scheduler, best
model's scores, history, random generators; read with ``torch.load(weights_only=True)``), the
progress events, history, curves, split and configuration.

Every file is written atomically, so a hard kill at any moment leaves the previous version intact.
SIGINT, SIGTERM or the stop file stop training before the next step: the unfinished epoch is
dropped (``--resume`` redoes it) and the files stay as the last finished epoch left them.

Construction is explicit and ordered: :meth:`Trainer.run` checks and locks the folder, then builds
the run's parts in turn (:func:`prepare_data` -> :func:`make_loaders` -> :func:`build_networks` ->
optimiser and schedule -> :class:`RunState`, from the checkpoint on resume), each a value passed to
the next, and hands them to :class:`TrainingRun`, which runs the epochs.

Selection of the best model (``--select``): the highest validation AUC; equal or undefined AUCs (a
validation set without both classes) fall back to the higher validation Dice, then the lower
validation loss. With ``--select loss`` (the fine-tuning default) the lowest validation loss, then AUC
and Dice. ``--patience N`` ends the run early when the validation loss has not improved for N epochs;
``--freeze-epochs N`` keeps the backbone's weights still for the first N epochs.

When the epochs are done, ``finish`` (``mffmt train`` passes
:func:`MFFMTCore.model_completion.complete_run`) completes the best model before the "done" event:
temperature, lesion-present rule and input check fitted on the validation patients, and the site
report of a fine-tuning run.
"""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from tqdm import tqdm

from MFFMTCore.base.devices import available_cores
from MFFMTCore.base.jsonsafe import json_safe
from MFFMTCore.base.run_folder import RunFolder
from MFFMTCore.data import BIRADS_CLASSES, MFFMTDataset, make_samples, summarize
from MFFMTCore.data.augment import ScannerAugment
from MFFMTCore.data.records import DatasetError, SampleRecord, label_index
from MFFMTCore.errors import MFFMTError
from MFFMTCore.evaluation.metrics import grouped_report
from MFFMTCore.evaluation.plots import plot_training_curves
from MFFMTCore.evaluation.predictions import predict_rows
from MFFMTCore.files import remove_temporaries
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
from MFFMTCore.training.distributed import DistributedContext
from MFFMTCore.training.optim import build_optimizer, build_scheduler
from MFFMTCore.training.progress import CompletionBar, CompletionStopped, EtaClock, ProgressLog, epoch_bar

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


def selection_score(metrics: dict[str, float], select: str = "auc") -> tuple[float, float, float]:
    """Orderable score of a validation result: (AUC, Dice, -loss), or (-loss, AUC, Dice) when
    ``select`` is ``"loss"``; undefined values lowest."""

    def finite(value: float | None, sign: float = 1.0) -> float:
        return sign * value if value is not None and math.isfinite(value) else -math.inf

    auc, dice, loss = finite(metrics.get("val_auc")), finite(metrics.get("val_dice")), finite(metrics.get("val_loss"), -1.0)
    return (loss, auc, dice) if select == "loss" else (auc, dice, loss)


def epochs_without_improvement(history: list[dict[str, Any]]) -> int:
    """Finished epochs since the one with the lowest validation loss (0 when the last is the lowest)."""
    losses = [entry.get("val_loss") for entry in history]
    finite = [(value, index) for index, value in enumerate(losses) if value is not None and math.isfinite(value)]
    if not finite:
        return 0
    return len(history) - 1 - min(finite)[1]


def set_backbone_frozen(network: MFFMT, frozen: bool) -> None:
    """Keep the backbone's weights still (no gradient, so no update and no weight decay) or free them."""
    for parameter in network.backbone.parameters():
        parameter.requires_grad_(not frozen)


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


# ------------------------------------------------------------------------------------- the parts
@dataclass
class RunData:
    """The records and datasets of a run, and the split that fixes them.

    Args:
        split: the content of ``split.json``.
        train_records, val_records: the records of each side.
        train_set: the training samples (every process).
        val_set: the validation samples, on the process that validates (rank 0); None elsewhere.
    """

    split: dict[str, Any]
    train_records: list[SampleRecord]
    val_records: list[SampleRecord]
    train_set: MFFMTDataset
    val_set: MFFMTDataset | None


@dataclass
class Loaders:
    """The data loaders of a run.

    Args:
        train: the training batches.
        validation: the validation batches on rank 0; None elsewhere.
        sampler: the distributed sampler of ``train`` under torchrun (its epoch is set each epoch), else None.
        steps_per_epoch: optimisation steps per epoch.
    """

    train: DataLoader
    validation: DataLoader | None
    sampler: DistributedSampler | None
    steps_per_epoch: int


@dataclass
class Networks:
    """The network being trained, bare and as the training step calls it.

    Args:
        bare: the network itself: its weights and architecture are what is saved, validated and
            given to the optimiser.
        trained: what the training forward pass calls: ``bare`` wrapped in DistributedDataParallel
            under torchrun (it averages the gradients across processes), else ``bare`` itself.
        init_message: where the initial weights came from, for the start message.
    """

    bare: MFFMT
    trained: nn.Module
    init_message: str


@dataclass
class RunState:
    """Where the run stands: what a checkpoint carries besides weights, optimiser and schedule.

    Args:
        start_epoch: the last finished epoch (0 for a new run).
        global_step: optimisation steps taken.
        history: one entry per finished epoch (``history.json``).
        best: the best epoch so far: ``score`` (see :func:`selection_score`, None before the first),
            ``epoch`` and ``metrics``.
    """

    start_epoch: int = 0
    global_step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"score": None, "epoch": None})

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any], select: str = "auc") -> RunState:
        best = dict(checkpoint["best"])
        best["score"] = selection_score(best["metrics"], select) if best.get("metrics") else None
        return cls(int(checkpoint["epoch"]), int(checkpoint["global_step"]), list(checkpoint["history"]), best)


def check_classes(config: TrainConfig, train: list[SampleRecord], validation: list[SampleRecord]) -> None:
    """Refuse data that cannot teach or measure benign against malignant, before any slow step."""
    for part, records, least in (("training", train, MIN_CLASS_SAMPLES), ("validation", validation, 1)):
        counts = {name: sum(label_index(record.label) == index for record in records)
                  for name, index in (("benign", 0), ("malignant", 1))}
        if part == "validation" and not records:
            continue  # no validation part was asked for (--val-fraction 0)
        if min(counts.values()) < least:
            raise DatasetError(", ".join(config.data),
                               f"the {part} part holds {counts['benign']} benign and {counts['malignant']} "
                               f"malignant image(s); at least {least} of each are needed "
                               "(a model trained or validated on one class cannot be trusted)")


def prepare_data(config: TrainConfig, context: DistributedContext, folder: RunFolder, resume: bool,
                 overwrite: bool) -> RunData:
    """Read and split the data (or restore the run's split), check it, then write the run's config
    and split (rank 0; with ``overwrite``, only now that the new data is known to be usable, the
    earlier run's files go) and cache the samples."""
    if resume:
        train, val, split = restore_split(config.data, folder.split)
    else:
        train, val, split = plan_split(config.data, config.val_fraction, config.seed)
    check_classes(config, train, val)
    if context.is_main:
        if overwrite:
            folder.remove_earlier_run()
        folder.write_config(config)
    size = (config.input_size, config.input_size)
    show = config.progress_bar and context.is_main
    train_set = MFFMTDataset(make_samples(train, config.mode, config.margin, progress=show), train=True,
                             size=size, augment=config.augment)
    train_set.build_cache(progress=show)
    val_set = MFFMTDataset(make_samples(val, config.mode, config.margin, progress=show), train=False,
                           size=size) if context.is_main else None
    if val_set is not None:
        val_set.build_cache(progress=show)
    if context.is_main and not resume:
        folder.write_split(split)
    return RunData(split, train, val, train_set, val_set)


def make_loaders(config: TrainConfig, context: DistributedContext, data: RunData) -> Loaders:
    """The training loader (this process's share under torchrun) and rank 0's validation loader."""
    per_rank = math.ceil(len(data.train_set) / context.world_size)
    if per_rank < 2:
        raise DatasetError(", ".join(config.data), f"too few training samples ({len(data.train_set)}) for "
                                                   f"{context.world_size} process(es); batch normalisation "
                                                   "needs 2 per step")
    # A last batch of one sample would break batch normalisation: drop only that case.
    drop_last = per_rank % config.batch_size == 1
    sampler = (DistributedSampler(data.train_set, context.world_size, context.rank, shuffle=True,
                                  seed=config.seed, drop_last=False) if context.enabled else None)
    pin = context.device.type == "cuda"
    train = DataLoader(data.train_set, batch_size=config.batch_size, shuffle=sampler is None, sampler=sampler,
                       num_workers=config.num_workers, drop_last=drop_last, pin_memory=pin,
                       persistent_workers=config.num_workers > 0)
    validation = None if data.val_set is None else DataLoader(
        data.val_set, batch_size=config.batch_size, shuffle=False, num_workers=config.num_workers,
        pin_memory=pin, persistent_workers=config.num_workers > 0)
    return Loaders(train, validation, sampler, len(train))


def build_networks(config: TrainConfig, context: DistributedContext, train_records: list[SampleRecord],
                   checkpoint: dict[str, Any] | None) -> Networks:
    """The network: from the checkpoint on resume, else from ``init_model``, the pretrained backbone
    or random initialisation (seeded), on the training device and wrapped for torchrun."""
    source = load_model(config.init_model)[0] if config.init_model and checkpoint is None else None
    aux = {} if config.aux == "none" or not any(record.birads for record in train_records) else \
        {"birads": len(BIRADS_CLASSES)}
    if checkpoint is not None:
        architecture = checkpoint["architecture"]
    elif source is not None:
        # The parent's architecture (its extra arguments included), with what the options set: they
        # are the parent's own unless the user overrode one (MFFMTCore.base.fine_tuning).
        architecture = {**source.architecture, **config.architecture(aux)}
    else:
        architecture = config.architecture(aux)
    torch.manual_seed(config.seed)
    network = MFFMT(**architecture)
    init_message = "random initialisation"
    if checkpoint is not None:
        network.load_state_dict(checkpoint["model"])
    elif source is not None:
        init_message = load_fitting_weights(network, source) + f" from {config.init_model}"
    elif config.pretrained_backbone:
        load_torchvision_weights(network.backbone, config.pretrained_backbone)
        init_message = f"backbone initialised from {config.pretrained_backbone}"
    bare = network.to(context.device)
    # Frozen layers get no gradient while they are frozen: DDP must not wait for them.
    trained = (DistributedDataParallel(bare, device_ids=[context.device.index] if context.device.type == "cuda"
                                       else None, find_unused_parameters=config.freeze_epochs > 0)
               if context.enabled else bare)
    return Networks(bare, trained, init_message)


def load_fitting_weights(network: MFFMT, source: MFFMT) -> str:
    """Copy every tensor of ``source`` that fits (new auxiliary heads start fresh); say how many."""
    reference = network.state_dict()
    fitting = {name: tensor for name, tensor in source.state_dict().items()
               if name in reference and reference[name].shape == tensor.shape}
    network.load_state_dict(fitting, strict=False)
    return f"{len(fitting)} of {len(reference)} tensors initialised"


# ------------------------------------------------------------------------------------- the trainer
class Trainer:
    """Train an MFFMT network as ``config`` says.

    Args:
        config: the run's configuration (its preset values are filled in here).
        resume: continue the run in ``config.output`` from its checkpoint.
        overwrite: start a new run in a folder holding an earlier one, deleting its files
            (:data:`~MFFMTCore.base.run_folder.RUN_FILES`) once the new run's data has passed its
            checks. Without it (or ``resume``) such a folder is refused.
        echo: where human-readable messages go (rank 0 only).
        finish: called on rank 0 when the epochs are done, before the "done" event, with the run
            folder, the training and validation records, the model the run started from (or None),
            the device and ``echo``, and ``progress``: a callable (units done, units in all, message)
            that becomes ``progress`` events and a bar (``mffmt train``:
            :func:`MFFMTCore.model_completion.complete_run`).
    """

    def __init__(self, config: TrainConfig, resume: bool = False, echo: Callable[[str], None] = tqdm.write,
                 overwrite: bool = False, finish: Callable[..., Any] | None = None) -> None:
        if resume and overwrite:
            raise MFFMTError("--overwrite", "cannot be combined with --resume")
        self.config = config.resolved()
        self.resume = resume
        self.overwrite = overwrite
        self.folder = RunFolder(self.config.output)
        self.context = DistributedContext(self.config.device)
        self._echo = echo
        self.finish = finish

    def echo(self, message: str) -> None:
        if self.context.is_main:
            self._echo(message)

    def threads(self) -> int:
        """CPU threads of this process: the option, else its share of the available cores."""
        if self.config.threads:
            return self.config.threads
        return max(1, available_cores() // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

    def _check_run_dir(self) -> None:
        """Refuse a folder that is a file, or that holds an earlier run (unless resume or overwrite)."""
        path = self.folder.path
        if path.exists() and not path.is_dir():
            raise MFFMTError(path, "is a file, not a folder; --output must name a run folder")
        if self.resume and not self.folder.checkpoint.is_file():
            raise MFFMTError(self.folder.checkpoint,
                             "checkpoint not found, nothing to resume (start a new run without --resume)")
        earlier = self.folder.earlier_run()
        # Every process looks before any writes: the collective in any() waits for all of them.
        if self.context.any(bool(earlier) and not self.resume and not self.overwrite):
            raise MFFMTError(path, f"already holds a training run ({', '.join(earlier)}); continue it "
                                   "with --resume, replace it with --overwrite, or choose another --output")

    def run(self) -> str:
        """Train until the last epoch or a stop request.

        Returns:
            ``"done"`` or ``"cancelled"``.
        """
        config, context = self.config, self.context
        lock = FolderLock(self.folder.path, "mffmt train")
        try:
            self._check_run_dir()
            problem: Exception | None = None
            if context.is_main:
                try:
                    lock.acquire()
                    remove_temporaries(self.folder.path)  # of a save that a kill interrupted
                except (MFFMTError, OSError) as error:
                    problem = error
            if context.any(problem is not None):  # every process stops, not only the one that saw it
                raise problem or MFFMTError(self.folder.path, "the main process cannot use this run folder")
        except BaseException:
            lock.release()
            context.close()
            raise
        torch.set_num_threads(self.threads())
        log = ProgressLog(self.folder.progress if context.is_main else None)
        stop_file = Path(config.stop_file) if config.stop_file else self.folder.stop
        try:
            with StopRequest(stop_file, self.echo) as stop:
                return self._build().train(stop, log)
        except BaseException as error:
            log.event("error", message=f"{type(error).__name__}: {error}")
            raise
        finally:
            log.close()
            lock.release()
            context.close()

    def _build(self) -> TrainingRun:
        """The run's parts, each built from the ones before it, in this order."""
        config, context = self.config, self.context
        checkpoint = load_checkpoint(self.folder.checkpoint) if self.resume else None
        data = prepare_data(config, context, self.folder, self.resume, self.overwrite)
        loaders = make_loaders(config, context, data)
        networks = build_networks(config, context, data.train_records, checkpoint)
        weights = {"lambda_loc": config.lambda_loc, "seg_weight": config.seg_weight, "aux_weight": config.aux_weight}
        loss_fn = MFFMTLoss(**weights, label_smoothing=config.label_smoothing)
        # Validation measures the plain loss, so that val_loss compares across recipes.
        val_loss_fn = MFFMTLoss(**weights)
        batch_augment = ScannerAugment() if config.augment == "scanner" else None
        precision = config.precision
        if precision == "auto":
            precision = "bf16" if native_bf16(context.device) else "fp32"
        optimizer = build_optimizer(networks.bare, config)
        scheduler = build_scheduler(optimizer, config, loaders.steps_per_epoch)
        state = RunState()
        if checkpoint is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
            scheduler.load_state_dict(checkpoint["scheduler"])
            state = RunState.from_checkpoint(checkpoint, config.select)
            restore_rng_state(checkpoint["rng"])
        return TrainingRun(config, context, self.folder, self.echo, data, loaders, networks, loss_fn, val_loss_fn,
                           batch_augment, precision, optimizer, scheduler, state, resumed=checkpoint is not None,
                           threads=self.threads(), finish=self.finish)


class TrainingRun:
    """The epochs of one run, from its built parts (see :meth:`Trainer._build`).

    Args:
        config: the resolved configuration.
        context: this process's place among the training processes.
        folder: the run folder.
        echo: where human-readable messages go (rank 0 only).
        data, loaders, networks: the run's data, loaders and network.
        loss_fn: the joint loss of the training steps.
        val_loss_fn: the joint loss of validation (no label smoothing).
        batch_augment: the batch augmentation on the training device (``--augment scanner``), else None.
        precision: ``fp32`` or ``bf16`` (``auto`` resolved).
        optimizer, scheduler: over ``networks.bare``, restored on resume.
        state: where the run stands (restored on resume); updated as epochs finish.
        resumed: the parts come from a checkpoint.
        threads: CPU threads of this process (for the start message).
        finish: see :class:`Trainer`.
    """

    def __init__(self, config: TrainConfig, context: DistributedContext, folder: RunFolder,
                 echo: Callable[[str], None], data: RunData, loaders: Loaders, networks: Networks,
                 loss_fn: MFFMTLoss, val_loss_fn: MFFMTLoss, batch_augment: ScannerAugment | None, precision: str,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, state: RunState,
                 resumed: bool, threads: int, finish: Callable[..., Any] | None = None) -> None:
        self.config = config
        self.context = context
        self.folder = folder
        self.echo = echo
        self.data = data
        self.loaders = loaders
        self.networks = networks
        self.loss_fn = loss_fn
        self.val_loss_fn = val_loss_fn
        self.batch_augment = batch_augment
        self.precision = precision
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.state = state
        self.resumed = resumed
        self.threads = threads
        self.finish = finish

    # ------------------------------------------------------------------- state
    def _checkpoint_state(self, epoch: int) -> dict[str, Any]:
        bare, state = self.networks.bare, self.state
        return {
            "epoch": epoch, "global_step": state.global_step, "architecture": bare.architecture,
            "model": bare.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "best": {key: value for key, value in state.best.items() if key != "score"},
            "history": state.history, "rng": capture_rng_state(), "config": asdict(self.config),
        }

    def model_info(self, epoch: int, report: dict[str, Any], val_loss: float) -> ModelInfo:
        """The metadata written with the best model."""
        config, data, bare = self.config, self.data, self.networks.bare
        recipe = {key: value for key, value in asdict(config).items()
                  if key not in ("data", "output", "stop_file", "progress_bar", "num_workers", "threads")}
        backbone = bare.architecture["backbone"]
        return ModelInfo(
            architecture=bare.architecture,
            class_names=["benign", "malignant"],
            input_size=[config.input_size, config.input_size],
            intensity="minmax",
            threshold=0.5,
            name=f"MFFMT{backbone.removeprefix('resnet')}",
            training=json_safe({
                "data": [str(path) for path in config.data],
                "data_summary": {"train": summarize(data.train_records), "validation": summarize(data.val_records)},
                "recipe": recipe,
                "split": {key: value for key, value in data.split.items() if key not in ("train", "validation")},
                "samples": {"train": len(data.train_set), "validation": len(data.val_set)},
                "epoch": epoch, "epochs": config.epochs, "processes": self.context.world_size,
                "precision": self.precision,
            }),
            validation=json_safe({**report, "epoch": epoch, "loss": val_loss}),
        )

    # -------------------------------------------------------------- the loops
    def _train_epoch(self, epoch: int, stop: StopRequest, log: ProgressLog, eta: EtaClock) -> dict[str, float] | None:
        """One epoch of training; the mean loss parts, or None when a stop was requested."""
        config, context, loaders = self.config, self.context, self.loaders
        self.networks.trained.train()
        if loaders.sampler is not None:
            loaders.sampler.set_epoch(epoch)
        sums = dict.fromkeys(LOSS_KEYS, 0.0)
        bar = epoch_bar(epoch, config.epochs, loaders.steps_per_epoch, config.progress_bar and context.is_main)
        try:
            for step, batch in enumerate(loaders.train, start=1):
                images = batch["image"].to(context.device, non_blocking=True)
                if self.batch_augment is not None:
                    batch = augment_batch(self.batch_augment, {**batch, "image": images})
                    images = batch["image"]
                with torch.autocast(context.device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    output = self.networks.trained(images)
                parts = self.loss_fn(float_output(output), batch)
                self.optimizer.zero_grad(set_to_none=True)
                parts.total.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.networks.bare.parameters(), config.grad_clip)
                self.optimizer.step()
                self.scheduler.step()
                self.state.global_step += 1
                # One collective per step carries the stop flag and the loss parts of every process.
                reduced = context.sum([float(stop.requested()), *(float(value.detach()) for value in parts)])
                values = dict(zip(LOSS_KEYS, (value / context.world_size for value in reduced[1:])))
                for key, value in values.items():
                    sums[key] += value
                eta.update(self.state.global_step)
                bar.update(1)
                bar.set_postfix(loss=f"{values['loss']:.3f}")
                if context.is_main:
                    log.event("step", epoch=epoch, epochs=config.epochs, step=step, steps=loaders.steps_per_epoch,
                              lr=self.scheduler.get_last_lr()[0], eta_s=eta.eta_s(), **values)
                if reduced[0] > 0:
                    return None
        finally:
            bar.close()
        return {key: value / max(loaders.steps_per_epoch, 1) for key, value in sums.items()}

    def _validate(self, stop: StopRequest) -> tuple[dict[str, Any], float, dict[str, float]] | None:
        """Validation on rank 0: (grouped report, loss, headline metrics), or None when stopped."""
        rows, val_loss = predict_rows(self.networks.bare, self.loaders.validation, self.context.device, threshold=0.5,
                                      loss_fn=self.val_loss_fn, should_stop=stop.requested)
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
        state, folder = self.state, self.folder
        entry = {"epoch": epoch, "lr": self.scheduler.get_last_lr()[0], **train_means, **headline,
                 "val_datasets": {name: {"auc": values["auc"], "dice": values["dice"]}
                                  for name, values in report["datasets"].items()},
                 "time_s": round(seconds, 1)}
        state.history.append(json_safe(entry))
        score = selection_score(headline, self.config.select)
        improved = state.best["score"] is None or score > tuple(state.best["score"])
        if improved:
            save_model(folder.model, self.networks.bare, self.model_info(epoch, report, val_loss))
            state.best = {"score": score, "epoch": epoch, "metrics": json_safe(headline)}
        folder.write_history(state.history)
        plot_training_curves(state.history, folder.curves)
        save_checkpoint(folder.checkpoint, self._checkpoint_state(epoch))
        best_auc = state.best["metrics"].get("val_auc")
        message = (f"epoch {epoch}/{self.config.epochs}: loss {train_means['loss']:.4f}, "
                   f"validation AUC {_fmt(headline['val_auc'])}, Dice {_fmt(headline['val_dice'])}, "
                   f"accuracy {_fmt(headline['val_accuracy'])} ({seconds:.0f} s)"
                   + (" - best so far, model saved" if improved else ""))
        self.echo(message)
        log.event("epoch", epoch=epoch, epochs=self.config.epochs, step=self.loaders.steps_per_epoch,
                  steps=self.loaders.steps_per_epoch, **train_means, **headline, best_auc=best_auc,
                  best_epoch=state.best["epoch"], eta_s=eta.eta_s(), message=message)

    def train(self, stop: StopRequest, log: ProgressLog) -> str:
        """Run the epochs left; ``"done"`` or ``"cancelled"``."""
        config, context, state = self.config, self.context, self.state
        steps = self.loaders.steps_per_epoch
        if self.resumed:
            if context.rank > 0:  # the checkpoint holds rank 0's generators: keep the others' augmentation distinct
                torch.manual_seed(config.seed + 1000 * context.rank + state.start_epoch)
            message = f"resumed from epoch {state.start_epoch} of {config.epochs} ({self.folder.checkpoint})"
            self.echo(message)
            log.event("resumed", epoch=state.start_epoch, epochs=config.epochs, message=message,
                      best_auc=(state.best.get("metrics") or {}).get("val_auc"))
        else:
            torch.manual_seed(config.seed + 1000 * context.rank)
            message = (f"training {self.networks.bare.architecture['backbone']} on {len(self.data.train_set)} "
                       f"samples, validating on {len(self.data.val_records)} images; {config.epochs} epochs of "
                       f"{steps} steps, {self.threads} thread(s), {context.world_size} process(es), "
                       f"{self.precision}; {self.networks.init_message}")
            self.echo(message)
            log.event("start", epoch=0, epochs=config.epochs, steps=steps, message=message)
        eta = EtaClock(config.epochs * steps, state.start_epoch * steps)
        last = config.epochs
        for epoch in range(state.start_epoch + 1, config.epochs + 1):
            started = time.monotonic()
            set_backbone_frozen(self.networks.bare, epoch <= config.freeze_epochs)
            train_means = self._train_epoch(epoch, stop, log, eta)
            validation = None
            if train_means is not None and context.is_main:
                validation = self._validate(stop)
                if validation is not None:
                    self._finish_epoch(epoch, train_means, validation, time.monotonic() - started, log, eta)
            # Rank 0 decides for everyone whether the epoch completed.
            if context.any(train_means is None or (context.is_main and validation is None)):
                return self._cancelled(stop, epoch, log)
            stale = epochs_without_improvement(state.history) if context.is_main else 0
            if context.any(config.patience > 0 and stale >= config.patience and epoch < config.epochs):
                last = epoch
                self.echo(f"stopping early after epoch {epoch}: the validation loss has not improved for "
                          f"{config.patience} epochs (--patience)")
                break
        set_backbone_frozen(self.networks.bare, False)
        best = state.best.get("metrics") or {}
        if self.finish is not None and context.is_main:
            completion = CompletionBar(log, config.progress_bar, stop.requested)
            try:
                self.finish(self.folder, self.data.train_records, self.data.val_records, config.init_model,
                            config.device, self.echo, progress=completion)
            except CompletionStopped as stage:
                message = (f"cancelled while completing the model ({stage}; {stop.reason}); the best model "
                           f"(epoch {state.best['epoch']}) and the checkpoint of epoch {last} are intact; "
                           "--resume completes the model")
                self.echo(message)
                log.event("cancelled", epoch=last, epochs=config.epochs, message=message,
                          best_auc=best.get("val_auc"))
                return "cancelled"
            finally:
                completion.close()
        message = (f"finished {last} epochs; best model from epoch {state.best['epoch']} "
                   f"(validation AUC {_fmt(best.get('val_auc'))}, Dice {_fmt(best.get('val_dice'))}) "
                   f"in {self.folder.model}")
        self.echo(message)
        log.event("done", epoch=last, epochs=config.epochs, best_auc=best.get("val_auc"),
                  best_epoch=state.best["epoch"], message=message)
        return "done"

    def _cancelled(self, stop: StopRequest, epoch: int, log: ProgressLog) -> str:
        last, best = epoch - 1, self.state.best
        kept = (f"the checkpoint of epoch {last} and the best model (epoch {best['epoch']}) are intact; "
                "continue with --resume" if last > 0 else
                "no epoch had finished, so nothing was saved; start the run again")
        message = f"cancelled during epoch {epoch} ({stop.reason or 'another process stopped'}); {kept}"
        self.echo(message)
        log.event("cancelled", epoch=last, epochs=self.config.epochs, message=message,
                  best_auc=(best.get("metrics") or {}).get("val_auc"))
        return "cancelled"


def _fmt(value: float | None) -> str:
    return f"{value:.3f}" if value is not None and math.isfinite(value) else "n/a"

