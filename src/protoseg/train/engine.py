"""Shared training loop: AdamW + poly schedule, AMP on CUDA, clipping, cancel, resume, best/last checkpoints."""

from __future__ import annotations

import json
import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from protoseg.runtime import seed_everything, select_device
from protoseg.models.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from protoseg.train.distributed import DistContext, barrier, init_distributed
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.cancel import CancelToken, Cancelled

logger = logging.getLogger(__name__)

LAST = "last.pt"
BEST = "best.pt"


@dataclass(frozen=True)
class OptimConfig:
    """The optimisation settings a trainer passes to the shared loop."""

    epochs: int
    lr: float
    weight_decay: float
    grad_clip: float
    batch_size: int
    num_workers: int = 0
    amp: bool = True
    seed: int = 0
    log_every: int = 10
    poly_power: float = 0.9


@dataclass(frozen=True)
class FitResult:
    """Where the run left its checkpoints and what it reached."""

    last: Path
    best: Path | None
    best_metric: float | None
    epochs_done: int
    steps_done: int
    cancelled: bool
    seconds: float


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
    def training_loss(self, model: torch.nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss of one batch (at global optimiser ``step``) plus its named components."""

    @abstractmethod
    def validate(self) -> dict[str, float]:
        """Metrics on the validation set (must include ``self.monitor``); empty when no val set."""

    @abstractmethod
    def make_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        """Checkpoint with the current weights and everything needed to predict."""

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    # ---- loop -----------------------------------------------------------------------------
    def _loader(self) -> tuple[DataLoader, DistributedSampler | None]:
        ds = self.train_dataset
        if len(ds) == 0:  # type: ignore[arg-type]
            raise TrainingError("the training set is empty; check data.root and the dataset layout")
        sampler = DistributedSampler(ds, shuffle=True, seed=self.optim.seed) if self.dist.enabled else None
        loader = DataLoader(
            ds,
            batch_size=self.optim.batch_size,
            shuffle=sampler is None,
            sampler=sampler,
            num_workers=self.optim.num_workers,
            drop_last=len(ds) > self.optim.batch_size,  # type: ignore[arg-type]
            generator=self.generator if sampler is None else None,
            persistent_workers=self.optim.num_workers > 0,
        )
        return loader, sampler

    def _event(self, kind: EventKind, epoch: int, step: int, total: int, **kw: Any) -> None:
        if self.dist.is_main:
            emit(self.callbacks, TrainEvent(kind=kind, stage=self.stage, epoch=epoch, step=step, total_steps=total, **kw))

    def _log_metrics(self, record: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.out_dir / "metrics.jsonl", "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def fit(self, resume: bool = False) -> FitResult:
        """Train for ``optim.epochs`` epochs (continuing from ``last.pt`` when ``resume``)."""
        t0 = time.perf_counter()
        self.out_dir.mkdir(parents=True, exist_ok=True)
        model = self.model.to(self.device)
        params = self.trainable_parameters()
        opt = torch.optim.AdamW(params, lr=self.optim.lr, weight_decay=self.optim.weight_decay)
        use_amp = self.optim.amp and self.device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        loader, sampler = self._loader()
        steps_per_epoch = max(1, len(loader))
        total = steps_per_epoch * self.optim.epochs
        start_epoch, best = 0, None
        last_path, best_path = self.out_dir / LAST, self.out_dir / BEST
        if resume and last_path.is_file():
            ckpt = load_checkpoint(last_path)
            if ckpt.stage.value != self.stage:
                raise CheckpointError(f"{last_path} is a {ckpt.stage.value} checkpoint, cannot resume {self.stage}")
            model.load_state_dict(ckpt.state_dict)
            if "optimizer" in ckpt.extra:
                opt.load_state_dict(ckpt.extra["optimizer"])
            if "scaler" in ckpt.extra and use_amp:
                scaler.load_state_dict(ckpt.extra["scaler"])
            start_epoch, best = ckpt.epoch, ckpt.best_metric
            logger.info("resuming %s from %s at epoch %d", self.stage, last_path, start_epoch)
        elif resume:
            logger.warning("resume requested but %s does not exist; starting from scratch", last_path)

        def poly(step: int) -> float:
            return max(0.0, 1.0 - step / max(1, total)) ** self.optim.poly_power

        train_model: torch.nn.Module = model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids)

        step = start_epoch * steps_per_epoch
        epoch = start_epoch
        self._event(EventKind.START, epoch, step, total, message=f"{self.stage}: {total - step} steps to run")
        cancelled = False
        try:
            for epoch in range(start_epoch, self.optim.epochs):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                model.train()
                for batch in loader:
                    self.cancel.raise_if_cancelled(f"{self.stage} training")
                    for group in opt.param_groups:
                        group["lr"] = self.optim.lr * poly(step)
                    batch = {k: (v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
                    with torch.autocast(self.device.type, enabled=use_amp):
                        loss, parts = self.training_loss(train_model, batch, step)
                    if self.dist.enabled:  # every parameter gets a gradient (zero if unused) so DDP's
                        # reducer sees the same set on every step (stage weights of 0, warm-ups, heads)
                        loss = loss + 0.0 * sum(p.sum() for p in params)
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss became {loss.item()} at step {step}; lower the learning rate "
                            f"(stage lr={self.optim.lr}) or disable AMP"
                        )
                    opt.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    if self.optim.grad_clip > 0:
                        scaler.unscale_(opt)
                        torch.nn.utils.clip_grad_norm_(params, self.optim.grad_clip)
                    scaler.step(opt)
                    scaler.update()
                    step += 1
                    parts = {"loss": float(loss.detach()), **parts}
                    self._event(EventKind.STEP, epoch, step, total, losses=parts)
                    if step % max(1, self.optim.log_every) == 0:
                        logger.info("%s epoch %d step %d/%d %s", self.stage, epoch + 1, step, total,
                                    " ".join(f"{k}={v:.4f}" for k, v in parts.items()))
                self._event(EventKind.EPOCH_END, epoch + 1, step, total)
                metrics: dict[str, float] = {}
                if self.dist.is_main:
                    model.eval()
                    with torch.no_grad():
                        metrics = self.validate()
                    self._event(EventKind.VALIDATION, epoch + 1, step, total, metrics=metrics)
                    self._log_metrics({"stage": self.stage, "epoch": epoch + 1, "step": step, **metrics})
                    value = metrics.get(self.monitor)
                    improved = value is not None and not math.isnan(value) and (best is None or value > best)
                    if improved:
                        best = value
                    extra = {"optimizer": opt.state_dict(), "scaler": scaler.state_dict()}
                    ckpt = self.make_checkpoint(epoch + 1, step, metrics, extra).with_updates(best_metric=best)
                    save_checkpoint(ckpt, last_path)
                    if improved or value is None:
                        save_checkpoint(ckpt.with_updates(extra={k: v for k, v in ckpt.extra.items()
                                                                 if k not in ("optimizer", "scaler")}), best_path)
                    self._event(EventKind.CHECKPOINT, epoch + 1, step, total, metrics=metrics, path=str(last_path))
                barrier(self.dist)
        except Cancelled:
            cancelled = True
            if self.dist.is_main and not last_path.exists():
                # keep the partial weights usable: an epoch-0 checkpoint that resumes from scratch
                ckpt = self.make_checkpoint(epoch, epoch * steps_per_epoch, {}, {})
                save_checkpoint(ckpt, last_path)
            self._event(EventKind.CANCELLED, epoch, step, total, path=str(last_path), message="cancelled")
            logger.warning("%s cancelled at step %d; last checkpoint: %s", self.stage, step, last_path)
        done_epochs = epoch + 1 if not cancelled else epoch
        self._event(EventKind.END, done_epochs, step, total, path=str(best_path if best_path.exists() else last_path))
        return FitResult(
            last=last_path,
            best=best_path if best_path.exists() else None,
            best_metric=best,
            epochs_done=done_epochs,
            steps_done=step,
            cancelled=cancelled,
            seconds=time.perf_counter() - t0,
        )
