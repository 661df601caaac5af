"""Stage-2 training: SegNet (C+1 classes) on stage-1 pseudo-masks, validated on the val masks."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, fixed_input_size
from protoseg.losses.noise_ce import confidence_weighted_ce, segmentation_ce
from protoseg.models.checkpoint import Stage
from protoseg.models.segnet import SegNet, SegNetConfig
from protoseg.train.configured import ConfiguredTrainer
from protoseg.train.device_augment import batch_augment_for
from protoseg.train.evaluation import evaluate_segmentation
from protoseg.train.events import Callback
from protoseg.train.stage2_init import init_encoder

logger = logging.getLogger(__name__)


def segnet_config(cfg: ProtosegConfig, num_classes: int) -> SegNetConfig:
    """Stage-2 architecture from the run config."""
    s2 = cfg.stage2
    return SegNetConfig(
        backbone=s2.backbone,
        weights=s2.weights,
        num_classes=num_classes,
        decoder_dim=s2.decoder_dim,
        img_size=fixed_input_size(cfg, s2.backbone),
    )


class Stage2Trainer(ConfiguredTrainer):
    """Cross-entropy on pseudo-masks ignoring 255 (plain, as in PBIP; ``stage2.noise_reduced``:
    confident pixels weighted up)."""

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
        super().__init__(Stage.STAGE2, cfg, train_ds, val_ds, classes, callbacks, cancel)
        self.batch_augment = batch_augment_for(cfg, self.optim.seed + self.dist.rank)
        self.net = SegNet(segnet_config(cfg, classes.num_classes))
        self.stage1_info = stage1_info or {}
        init_encoder(self.net, cfg.stage2.encoder_init, self.stage1_info.get("checkpoint"))

    def training_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        logits = model(batch["image"])
        target = batch["mask"].long()
        if self.cfg.stage2.noise_reduced and "confidence" in batch:
            loss = confidence_weighted_ce(logits, target, batch["confidence"])
        else:
            loss = segmentation_ce(logits, target)
        return loss, {"ce": float(loss.detach())}

    def validate(self) -> dict[str, float]:
        if self._val is None or len(self._val) == 0:  # type: ignore[arg-type]
            return {}
        return evaluate_segmentation(
            self.net, self._val, self.classes, self.device, self.cfg.data.batch_size, self.cfg.stage2.tta
        )

    def checkpoint_extra(self) -> dict[str, Any]:
        return {"stage1": self.stage1_info}
