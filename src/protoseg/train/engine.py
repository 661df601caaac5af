"""Shared training loop: AdamW + poly schedule, AMP on CUDA, clipping, cancel, resume, best/last checkpoints."""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from protoseg.cancel import Cancelled, CancelToken
from protoseg.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from protoseg.outputs import clean_stale_temporaries
from protoseg.runtime import resolve_num_workers, seed_everything, select_device
from protoseg.train.device_augment import BatchStainJitter
from protoseg.train.distributed import DistContext, barrier, init_distributed
from protoseg.train.errors import TrainingError
from protoseg.train.estimate import RunTimeEstimate
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.train.optimizer import adamw, load_optimizer_state
from protoseg.train.outcome import FitResult
from protoseg.train.runstate import (
    BEST,
    LAST,
    RunLock,
    capture_rng,
    check_new_run,
    clear_checkpoints,
    log_metrics,
    restore_rng,
    trim_metrics,
)
from protoseg.train.sampling import KeyedDistributedSampler, training_sampler

logger = logging.getLogger(__name__)

#: Key naming the metric ``best.pt`` is chosen by (``Trainer.monitor``), in checkpoint metrics and metrics.jsonl rows.
SELECTION_KEY = "selection_metric"

#: ``Checkpoint.extra`` keys only a resume needs (left out of ``best.pt``).
_RESUME_ONLY = ("optimizer", "scaler", "rng")


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation settings a trainer passes to the shared loop."""

    epochs: int
    lr: float
    weight_decay: float
    grad_clip: float
    batch_size: int
    num_workers: int | None = None  # None: chosen from the machine (protoseg.runtime.default_num_workers)
    amp: bool = True
    seed: int = 0
    log_every: int = 10
    poly_power: float = 0.9


@dataclass
class _FitState:
    """Mutable state of one ``Trainer.fit`` call, handed between its steps."""

    model: torch.nn.Module  # unwrapped network
    train_model: torch.nn.Module  # what the loss runs through (DDP wrapper under torchrun)
    params: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    use_amp: bool
    loader: DataLoader
    sampler: DistributedSampler | None
    steps_per_epoch: int
    total: int
    epoch: int = 0  # index of the epoch being trained (the start epoch before the loop)
    epochs_done: int = 0
    step: int = 0
    best: float | None = None
    rng_start: dict[str, Any] | None = None  # random states at the start of the current epoch
    estimate: RunTimeEstimate | None = None  # run-time estimate from the first steps (logged once)


class Trainer(ABC):
    """Subclasses provide the model, the loss on a batch, validation and the checkpoint content."""

    stage: str = "stage"
    monitor: str = "mIoU"

    def __init__(
        self,
        optim: OptimConfig,
        out_dir: str | Path,
        callbacks: Sequence[Callback] = (),
        cancel: CancelToken | None = None,
        device: str = "auto",
    ) -> None:
        self.optim = optim
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.cancel = cancel or CancelToken()
        self.device = select_device(device)
        self.dist: DistContext = init_distributed(self.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        self.generator = seed_everything(optim.seed + self.dist.rank)
        #: Stain jitter of each training batch on the device (set by stages with ``data.augment_on_device``).
        self.batch_augment: BatchStainJitter | None = None

    # ---- to implement -------------------------------------------------------------------
    @property
    @abstractmethod
    def model(self) -> torch.nn.Module:
        """The network being trained (unwrapped)."""

    @property
    @abstractmethod
    def train_dataset(self) -> Dataset:
        """Training samples (dicts with image/label[/mask])."""

    @abstractmethod
    def training_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one batch (at global optimiser ``step``) plus its named components."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Metrics on the validation set (must include ``self.monitor``); empty when no val set."""

    @abstractmethod
    def make_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        """Checkpoint with the current weights and everything needed to predict."""

    def sample_weights(self) -> np.ndarray | None:
        """Per-sample draw weights of the training set (None: each sample once per epoch, shuffled)."""
        return None

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ---- loop -----------------------------------------------------------------------------
    def _loader(self) -> tuple[DataLoader, DistributedSampler | None]:
        ds = self.train_dataset
        if len(ds) == 0:  # type: ignore[arg-type]
            raise TrainingError("the training set is empty; check data.root and the dataset layout")
        # keys (index, augmentation seed): a sample's augmentation is the same in any worker and on resume
        sampler = training_sampler(ds, self.generator, self.optim.seed, self.dist.enabled, self.sample_weights())
        workers = resolve_num_workers(self.optim.num_workers, self.device.type, self.dist.world_size)
        cuda = self.device.type == "cuda"
        loader = DataLoader(
            ds,
            batch_size=self.optim.batch_size,
            sampler=sampler,
            num_workers=workers,
            drop_last=len(ds) > self.optim.batch_size,  # type: ignore[arg-type]
            # worker seeds only (augmentations come from the keys): a private generator, so persistent workers
            # (one draw per run, not per epoch) leave the data-order stream as with none, and on resume
            generator=torch.Generator().manual_seed(self.optim.seed + self.dist.rank),
            persistent_workers=workers > 0,
            pin_memory=cuda,  # page-locked batches: asynchronous host-to-device copies
            prefetch_factor=(4 if cuda else 2) if workers > 0 else None,
        )
        return loader, sampler if isinstance(sampler, KeyedDistributedSampler) else None

    def _event(self, kind: EventKind, epoch: int, step: int, total: int, **kw: Any) -> None:
        if self.dist.is_main:
            event = TrainEvent(kind=kind, stage=self.stage, epoch=epoch, step=step, total_steps=total, **kw)
            emit(self.callbacks, event)

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            log_metrics(self.out_dir, record)

    # ---- fit: one small step per concern ------------------------------------------------------
    def fit(self, resume: bool = False, overwrite: bool = False) -> FitResult:
        """Train for ``optim.epochs`` epochs (continuing from ``last.pt`` when ``resume``).

        A set ``CancelToken`` stops the run cleanly (``FitResult.cancelled``, ``last.pt`` usable);
        failures (empty training set, non-finite loss) raise ``TrainingError``. One process per output
        folder (a lock file; a second one raises ``TrainingError``); a resumed run restores the random
        states and data order, so it reproduces the uninterrupted run. A fresh run over an earlier run's
        checkpoints raises ``TrainingError`` unless ``overwrite`` (they are then removed first).
        """
        lock = RunLock(self.out_dir).acquire() if self.dist.is_main else None
        try:
            stale = check_new_run(self.out_dir, resume, overwrite)  # every rank: all refuse, or none
            if lock is not None:
                clear_checkpoints(stale)
            return self._fit(resume)
        finally:
            if lock is not None:
                lock.release()

    def _fit(self, resume: bool) -> FitResult:
        t0 = time.perf_counter()
        if self.dist.is_main:
            clean_stale_temporaries(self.out_dir)  # left by a killed checkpoint save (we hold the lock)
        run = self._prepare()
        if resume:
            self._restore(run)
        if self.dist.is_main:
            trim_metrics(self.out_dir, self.stage, run.epoch)  # epochs after the restored one are logged again
        run.train_model = self._wrap(run.model)
        run.step = run.epoch * run.steps_per_epoch
        self._event(
            EventKind.START,
            run.epoch,
            run.step,
            run.total,
            message=f"{self.stage}: {run.total - run.step} steps to run",
        )
        if self.dist.is_main:
            run.estimate = RunTimeEstimate(self.stage, self.optim.epochs, run.steps_per_epoch, start_step=run.step)
        cancelled = False
        try:
            for epoch in range(run.epoch, self.optim.epochs):
                run.epoch = epoch
                self._train_epoch(run)
                self._end_epoch(run)
                run.epochs_done = epoch + 1
        except Cancelled:
            cancelled = True
            self._on_cancel(run)
        return self._finish(run, cancelled, t0)

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """AdamW at the stage's lr and weight decay, fused where torch has the kernel; a trainer may choose another."""
        return adamw(params, self.optim.lr, self.optim.weight_decay)

    def _prepare(self) -> _FitState:
        """Model on the device, optimiser, AMP scaler and the training loader of a fresh run."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model = self.model.to(self.device)
        params = self.trainable_parameters()
        opt = self.make_optimizer(params)
        use_amp = self.optim.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        loader, sampler = self._loader()
        steps_per_epoch = max(1, len(loader))
        return _FitState(
            model=model,
            train_model=model,
            params=params,
            opt=opt,
            scaler=scaler,
            use_amp=use_amp,
            loader=loader,
            sampler=sampler,
            steps_per_epoch=steps_per_epoch,
            total=steps_per_epoch * self.optim.epochs,
        )

    def _restore(self, run: _FitState) -> None:
        """Load weights, optimiser/scaler state, epoch and best metric from ``last.pt`` (if it exists)."""
        last_path = self.out_dir / LAST
        if not last_path.is_file():
            logger.warning("resume requested but %s does not exist; starting from scratch", last_path)
            return
        ckpt = load_checkpoint(last_path)
        if ckpt.stage.value != self.stage:
            raise CheckpointError(f"{last_path} is a {ckpt.stage.value} checkpoint, cannot resume {self.stage}")
        run.model.load_state_dict(ckpt.state_dict)
        if "optimizer" in ckpt.extra:
            load_optimizer_state(run.opt, ckpt.extra["optimizer"])
        if "scaler" in ckpt.extra and run.use_amp:
            run.scaler.load_state_dict(ckpt.extra["scaler"])
        run.epoch = run.epochs_done = ckpt.epoch
        run.best = self._restored_best(ckpt)
        if "rng" in ckpt.extra:
            restore_rng(ckpt.extra["rng"], self.generator, self._augment_generator())
        else:
            logger.warning("%s has no random states (older protoseg): the resumed run differs", last_path)
        logger.info("resuming %s from %s at epoch %d", self.stage, last_path, run.epoch)

    def _restored_best(self, ckpt: Checkpoint) -> float | None:
        """The best value to beat after a resume; None (the next validation writes ``best.pt``) when the
        checkpoint's was measured by another metric (older checkpoints name none: they used ``mIoU``)."""
        chosen_by = ckpt.metrics.get(SELECTION_KEY, "mIoU")
        if ckpt.best_metric is not None and chosen_by != self.monitor:
            logger.warning(
                "%s: best.pt was chosen by %s, this run chooses by %s: the next validation replaces it",
                self.stage,
                chosen_by,
                self.monitor,
            )
            return None
        return ckpt.best_metric

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The module the loss runs through: ``model`` itself, or its DDP wrapper under torchrun."""
        if not self.dist.enabled:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _train_epoch(self, run: _FitState) -> None:
        """One pass over the loader; the cancel token is checked before every batch."""
        if run.sampler is not None:
            run.sampler.set_epoch(run.epoch)
        run.rng_start = capture_rng(self.generator, self._augment_generator())
        run.model.train()
        for batch in run.loader:
            self.cancel.raise_if_cancelled(f"{self.stage} training")
            parts = self._step(run, batch)
            run.step += 1
            self._event(EventKind.STEP, run.epoch, run.step, run.total, losses=parts)
            note = run.estimate.after_step(run.step) if run.estimate is not None else None
            if note:
                logger.info("%s", note)
            if run.step % max(1, self.optim.log_every) == 0:
                logger.info(
                    "%s epoch %d step %d/%d %s",
                    self.stage,
                    run.epoch + 1,
                    run.step,
                    run.total,
                    " ".join(f"{k}={v:.4f}" for k, v in parts.items()),
                )

    def _augment_generator(self) -> torch.Generator | None:
        return self.batch_augment.generator if self.batch_augment is not None else None

    def _lr(self, step: int, total: int) -> float:
        """Poly schedule: lr * (1 - step/total) ** poly_power."""
        return self.optim.lr * max(0.0, 1.0 - step / max(1, total)) ** self.optim.poly_power

    def _step(self, run: _FitState, batch: dict[str, Any]) -> dict[str, float]:
        """One optimiser step (schedule, AMP, finite-loss check, clipping); returns the named losses."""
        for group in run.opt.param_groups:
            group["lr"] = self._lr(run.step, run.total)
        batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
        if self.batch_augment is not None:  # on the device, before the model normalises the images
            batch = self.batch_augment(batch)
        with torch.autocast(self.device.type, enabled=run.use_amp):
            loss, parts = self.training_loss(run.train_model, batch, run.step)
        if self.dist.enabled:  # every parameter gets a gradient (zero if unused) so DDP's
            # reducer sees the same set on every step (stage weights of 0, warm-ups, heads)
            loss = loss + 0.0 * sum(p.sum() for p in run.params)
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {run.step}; lower the learning rate "
                f"(stage lr={self.optim.lr}) or disable AMP"
            )
        run.opt.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if self.optim.grad_clip > 0:
            run.scaler.unscale_(run.opt)
            torch.nn.utils.clip_grad_norm_(run.params, self.optim.grad_clip)
        run.scaler.step(run.opt)
        run.scaler.update()
        return {"loss": float(loss.detach()), **parts}

    def _end_epoch(self, run: _FitState) -> None:
        """EPOCH_END event, then (main rank) validation and checkpoints; all ranks meet at a barrier."""
        self._event(EventKind.EPOCH_END, run.epoch + 1, run.step, run.total)
        if self.dist.is_main:
            self._save(run, self._validate(run))
        barrier(self.dist)

    def _validate(self, run: _FitState) -> dict[str, float]:
        """Validation metrics (eval mode, no grad), reported as an event and a metrics.jsonl row."""
        run.model.eval()
        with torch.no_grad():
            metrics = self.validate()
        self._event(EventKind.VALIDATION, run.epoch + 1, run.step, run.total, metrics=metrics)
        row = {"stage": self.stage, "epoch": run.epoch + 1, "step": run.step, **metrics}
        if self.monitor in metrics:
            row[SELECTION_KEY] = self.monitor
        self._log_metrics(row)
        return metrics

    def _save(self, run: _FitState, metrics: dict[str, float]) -> None:
        """``last.pt`` (with optimiser state) every epoch; ``best.pt`` when the monitor improved or is absent;
        checkpoints name the monitor in their metrics (``SELECTION_KEY``) when they have it."""
        value = metrics.get(self.monitor)
        improved = value is not None and not math.isnan(value) and (run.best is None or value > run.best)
        self._log_selection(run, value, improved)
        if improved:
            run.best = value
        named: dict[str, Any] = {**metrics, SELECTION_KEY: self.monitor} if value is not None else metrics
        last_path, best_path = self.out_dir / LAST, self.out_dir / BEST
        extra = {"optimizer": run.opt.state_dict(), "scaler": run.scaler.state_dict()}
        # after validation: where the next epoch starts
        extra["rng"] = capture_rng(self.generator, self._augment_generator())
        ckpt = self.make_checkpoint(run.epoch + 1, run.step, named, extra).with_updates(best_metric=run.best)
        save_checkpoint(ckpt, last_path)
        if improved or value is None:
            save_checkpoint(
                ckpt.with_updates(extra={k: v for k, v in ckpt.extra.items() if k not in _RESUME_ONLY}),
                best_path,
            )
        self._event(EventKind.CHECKPOINT, run.epoch + 1, run.step, run.total, metrics=metrics, path=str(last_path))

    def _log_selection(self, run: _FitState, value: float | None, improved: bool) -> None:
        """One line saying whether this epoch becomes ``best.pt`` and by which metric."""
        if value is None:
            return
        if improved:
            logger.info("%s best.pt: epoch %d, %s %.4f", self.stage, run.epoch + 1, self.monitor, value)
        else:
            logger.info(
                "%s best.pt unchanged: epoch %d %s %.4f, best %.4f",
                self.stage,
                run.epoch + 1,
                self.monitor,
                value,
                run.best if run.best is not None else float("nan"),
            )

    def _on_cancel(self, run: _FitState) -> None:
        """Keep the partial run usable: without an earlier ``last.pt``, write an epoch-start one."""
        last_path = self.out_dir / LAST
        if self.dist.is_main and not last_path.exists():
            # resuming from it starts the interrupted epoch again
            extra = {} if run.rng_start is None else {"rng": run.rng_start}
            ckpt = self.make_checkpoint(run.epoch, run.epoch * run.steps_per_epoch, {}, extra)
            save_checkpoint(ckpt, last_path)
        self._event(EventKind.CANCELLED, run.epoch, run.step, run.total, path=str(last_path), message="cancelled")
        logger.warning("%s cancelled at step %d; last checkpoint: %s", self.stage, run.step, last_path)

    def _finish(self, run: _FitState, cancelled: bool, t0: float) -> FitResult:
        """END event and the result (``best.pt`` when validation produced one, else ``last.pt``)."""
        last_path, best_path = self.out_dir / LAST, self.out_dir / BEST
        best = best_path if best_path.exists() else None
        self._event(EventKind.END, run.epochs_done, run.step, run.total, path=str(best or last_path))
        return FitResult(
            last=last_path,
            best=best,
            best_metric=run.best,
            selection_metric=self.monitor if run.best is not None else None,
            epochs_done=run.epochs_done,
            steps_done=run.step,
            cancelled=cancelled,
            seconds=time.perf_counter() - t0,
        )
