"""Trainer base for protoseg's two stages: config → optimiser settings, datasets, and the checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, Stage1Config, Stage2Config, config_from_dict, to_dict
from protoseg.models.checkpoint import Checkpoint, Stage
from protoseg.models.factory import model_config
from protoseg.train.engine import OptimConfig, Trainer
from protoseg.train.events import Callback


def optim_config(stage: Stage1Config | Stage2Config, cfg: ProtosegConfig) -> OptimConfig:
    """Shared-loop settings of one stage."""
    return OptimConfig(
        epochs=stage.epochs,
        lr=stage.lr,
        weight_decay=stage.weight_decay,
        grad_clip=stage.grad_clip,
        batch_size=cfg.data.batch_size,
        num_workers=cfg.data.num_workers,
        amp=cfg.run.amp,
        seed=cfg.run.seed,
        log_every=cfg.run.log_every,
    )


def checkpoint_config(ckpt: Checkpoint) -> ProtosegConfig:
    """The run config a checkpoint was trained with (``train_config``); checkpoints written before the
    ``stage1`` sections existed (flat keys such as ``stage1.bg_threshold``) load too."""
    return config_from_dict(ckpt.train_config)


class ConfiguredTrainer(Trainer):
    """Holds the run config, datasets and network; subclasses set ``self.net`` and the loss."""

    net: torch.nn.Module

    def __init__(
        self,
        stage: Stage,
        cfg: ProtosegConfig,
        train_ds: Dataset,
        val_ds: Dataset | None,
        classes: ClassSpec,
        callbacks: Sequence[Callback] = (),
        cancel: CancelToken | None = None,
    ) -> None:
        stage_cfg = cfg.stage1 if stage is Stage.STAGE1 else cfg.stage2
        super().__init__(
            optim_config(stage_cfg, cfg), Path(cfg.run.out_dir) / stage.value, callbacks, cancel, cfg.run.device
        )
        self.stage_kind = stage
        self.cfg, self.classes = cfg, classes
        self._train, self._val = train_ds, val_ds

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    @property
    def train_dataset(self) -> Dataset:
        return self._train

    def checkpoint_extra(self) -> dict[str, Any]:
        """Stage-specific provenance stored in ``Checkpoint.extra``."""
        return {}

    def make_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        cfg = self.net.config  # type: ignore[attr-defined]
        return Checkpoint(
            stage=self.stage_kind,
            model_config=model_config(self.net),
            state_dict={k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            classes=self.classes,
            mpp=self.cfg.run.mpp,
            patch_size=self.cfg.data.patch_size,
            mean=tuple(cfg.mean),
            std=tuple(cfg.std),
            train_config=to_dict(self.cfg),
            epoch=epoch,
            step=step,
            metrics=metrics,
            extra={**extra, **self.checkpoint_extra()},
        )
