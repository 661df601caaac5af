"""Trainer base for protoseg's two stages: config → optimiser settings, datasets, and the checkpoint."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import (
    ProtosegConfig,
    Recipe,
    RegionMasking,
    Sampling,
    Stage1Config,
    Stage2Config,
    config_from_dict,
    to_dict,
)
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.models.factory import model_config
from protoseg.train.engine import LAST, OptimConfig, Trainer
from protoseg.train.errors import TrainingError
from protoseg.train.evaluation import SKIPPED_WITHOUT_MASKS, validation_split
from protoseg.train.events import Callback
from protoseg.train.sampling import balanced_weights, sample_labels

logger = logging.getLogger(__name__)


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


#: Model-config keys a resumed run may change: pretrained weights' source and the calibrated class gate.
_NOT_ARCHITECTURE = ("weights", "class_thresholds")


def resume_mismatches(ckpt: Checkpoint, net: dict[str, Any], classes: ClassSpec, cfg: ProtosegConfig) -> list[str]:
    """What differs between a checkpoint and the run about to continue it: classes, stage-1 recipe and
    add-ons, and every network setting (backbone, heads, sizes); empty when it can be resumed."""
    out = []
    if tuple(ckpt.classes.names) != tuple(classes.names):
        out.append(f"classes {list(ckpt.classes.names)} vs {list(classes.names)}")
    old = ckpt.train_config.get("stage1", {}) if ckpt.stage is Stage.STAGE1 else {}
    for key, now in (("recipe", cfg.stage1.recipe.value), ("addons", [a.value for a in cfg.stage1.addons])):
        if key in old and (list(old[key]) if key == "addons" else old[key]) != now:
            out.append(f"stage1.{key} {old[key]!r} vs {now!r}")
    if old and cfg.stage1.recipe is not Recipe.CAM:  # L_SIM's regions; runs before the setting used the fill
        masked = old.get("similarity", {}).get("masking", RegionMasking.FILL.value)
        if masked != cfg.stage1.similarity.masking.value:
            out.append(
                f"stage1.similarity.masking {masked!r} vs {cfg.stage1.similarity.masking.value!r} "
                f"(to resume: --set stage1.similarity.masking={masked})"
            )
    if ckpt.data_scale != cfg.data.scale:
        out.append(f"data.scale {ckpt.data_scale:g} vs {cfg.data.scale:g}")
    section = ckpt.stage.value
    sampled = ckpt.train_config.get(section, {}).get("sampling", Sampling.UNIFORM.value)
    now = getattr(cfg, section).sampling.value
    if sampled != now:  # the data-order stream draws differently
        dock = (
            f"; Train dock: 'Balance classes' {'on' if sampled == 'balanced' else 'off'}" if section == "stage1" else ""
        )
        out.append(f"{section}.sampling {sampled!r} vs {now!r} (to resume: --set {section}.sampling={sampled}{dock})")
    for key in sorted(set(ckpt.model_config) | set(net)):
        if key not in _NOT_ARCHITECTURE and ckpt.model_config.get(key) != net.get(key):
            out.append(f"model {key} {ckpt.model_config.get(key)!r} vs {net.get(key)!r}")
    return out


class ConfiguredTrainer(Trainer):
    """Holds the run config, datasets and network; subclasses set ``self.net`` and the loss."""

    net: torch.nn.Module
    #: Logged when the val split has no masks: what validation and ``best.pt`` do then.
    without_val_masks: str = SKIPPED_WITHOUT_MASKS

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
        self._train, self._val = train_ds, validation_split(val_ds, self.without_val_masks)

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    @property
    def train_dataset(self) -> Dataset:
        return self._train

    def _restore(self, run: Any) -> None:
        """Refuse, naming each difference, to resume from a ``last.pt`` of another class set, recipe or
        network (instead of a state-dict traceback); then restore as usual."""
        last = self.out_dir / LAST
        if last.is_file():
            diffs = resume_mismatches(load_checkpoint(last), model_config(self.net), self.classes, self.cfg)
            if diffs:
                raise TrainingError(
                    f"cannot resume from {last}: it was trained with other settings (checkpoint vs now: "
                    f"{'; '.join(diffs)}); use the same settings, or start fresh in another run.out_dir"
                )
        super()._restore(run)

    def sample_weights(self) -> np.ndarray | None:
        """``stage1.sampling`` / ``stage2.sampling``: class-balanced draw weights from the training patches'
        image-level labels (said once with the class shares they give), or None (uniform; also when the
        dataset has no labels)."""
        key = f"{self.stage_kind.value}.sampling"
        if getattr(self.cfg, self.stage_kind.value).sampling is not Sampling.BALANCED:
            return None
        labels = sample_labels(self.train_dataset)
        if labels is None or len(labels) == 0:
            logger.warning("%s=balanced: the training set has no image-level labels; sampling uniformly", key)
            return None
        weights = balanced_weights(labels)
        held = labels > 0
        before = held.mean(axis=0)
        after = (held * weights[:, None]).sum(axis=0) / weights.sum()
        names = self.classes.names
        logger.info(
            "class-balanced sampling (%s=balanced): share of draws per class %s (uniform: %s)",
            key,
            ", ".join(f"{n} {v:.0%}" for n, v in zip(names, after)),
            ", ".join(f"{n} {v:.0%}" for n, v in zip(names, before)),
        )
        return weights

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
