"""Stage-2 training: SegNet (C+1 classes) on stage-1 pseudo-masks, validated on the val masks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, to_dict
from protoseg.losses.noise_ce import noise_reduced_ce, segmentation_ce
from protoseg.models.factory import model_config
from protoseg.models.segnet import SegNet, SegNetConfig
from protoseg.train.checkpoint import Checkpoint, Stage
from protoseg.train.engine import OptimConfig, Trainer
from protoseg.train.evaluation import evaluate_segmentation
from protoseg.train.events import Callback, CancelToken

logger = logging.getLogger(__name__)


def segnet_config(cfg: ProtosegConfig, num_classes: int) -> SegNetConfig:
    """Stage-2 architecture from the run config."""
    s2 = cfg.stage2
    return SegNetConfig(
        backbone=s2.backbone, weights=s2.weights, num_classes=num_classes, decoder_dim=s2.decoder_dim,
        img_size=cfg.data.patch_size if s2.backbone.startswith(("swin", "vit")) else None,
    )


class Stage2Trainer(Trainer):
    """Cross-entropy (noise-reduced, weighted by CAM confidence) on pseudo-masks."""

    stage = Stage.STAGE2.value

    def __init__(
        self,
        cfg: ProtosegConfig,
        train_ds: Dataset,
        val_ds: Dataset | None,
        classes: ClassSpec,
        callbacks: Sequence[Callback] = (),
        cancel: CancelToken | None = None,
        stage1_info: dict[str, Any] | None = None,
    ) -> None:
        s2 = cfg.stage2
        super().__init__(
            OptimConfig(epochs=s2.epochs, lr=s2.lr, weight_decay=s2.weight_decay, grad_clip=s2.grad_clip,
                        batch_size=cfg.data.batch_size, num_workers=cfg.data.num_workers, amp=cfg.run.amp,
                        seed=cfg.run.seed, log_every=cfg.run.log_every),
            Path(cfg.run.out_dir) / "stage2", callbacks, cancel, cfg.run.device,
        )
        self.cfg, self.classes = cfg, classes
        self._train, self._val = train_ds, val_ds
        self.net = SegNet(segnet_config(cfg, classes.num_classes))
        self.stage1_info = stage1_info or {}

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    @property
    def train_dataset(self) -> Dataset:
        return self._train

    def training_loss(self, model: torch.nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"])
        target = batch["mask"].long()
        if self.cfg.stage2.noise_reduced and "confidence" in batch:
            loss = noise_reduced_ce(logits, target, batch["confidence"])
        else:
            loss = segmentation_ce(logits, target)
        return loss, {"ce": float(loss.detach())}

    def validate(self) -> dict[str, float]:
        if self._val is None or len(self._val) == 0:  # type: ignore[arg-type]
            return {}
        return evaluate_segmentation(self.net, self._val, self.classes, self.device,
                                     self.cfg.data.batch_size, self.cfg.stage2.tta)

    def make_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        return Checkpoint(
            stage=Stage.STAGE2,
            model_config=model_config(self.net),
            state_dict={k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            classes=self.classes,
            mpp=self.cfg.run.mpp,
            patch_size=self.cfg.data.patch_size,
            mean=tuple(self.net.config.mean),
            std=tuple(self.net.config.std),
            train_config=to_dict(self.cfg),
            epoch=epoch,
            step=step,
            metrics=metrics,
            extra={**extra, "stage1": self.stage1_info},
        )
