"""End-to-end jobs from a config: open data, build/load the bank, train stage 1, pseudo-masks, stage 2, eval.

The CLI and the napari widgets call these; each returns paths/metrics and reports through callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset, Subset

from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, Recipe, save_config
from protoseg.data.augment import default_augmentation
from protoseg.data.datasets import PatchDataset, open_dataset
from protoseg.data.layouts import parse_mpp
from protoseg.data.records import Split
from protoseg.runtime import select_device
from protoseg.train.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.train.engine import BEST, LAST, FitResult
from protoseg.train.events import Callback, CancelToken
from protoseg.train.pseudo import PseudoMaskDataset, export_pseudo_masks
from protoseg.train.evaluation import evaluate_pseudo, evaluate_segmentation
from protoseg.train.stage1 import Stage1Trainer, encoder_from_config
from protoseg.train.stage2 import Stage2Trainer

logger = logging.getLogger(__name__)


def _subset(ds: PatchDataset, limit: int | None, seed: int) -> Dataset:
    if limit is None or limit >= len(ds):
        return ds
    idx = np.random.default_rng(seed).choice(len(ds), size=limit, replace=False)
    return Subset(ds, sorted(int(i) for i in idx))


def open_split(cfg: ProtosegConfig, split: Split, augment: bool = False) -> PatchDataset | None:
    """One split of ``data.root`` (None when a val/test split is absent)."""
    transform = default_augmentation(seed=cfg.run.seed) if augment else None
    try:
        return open_dataset(cfg.data.root, split, cfg.data.layout, transform=transform)
    except Exception:
        if split is Split.TRAIN:
            raise
        logger.warning("no usable %s split in %s; skipping validation", split.value, cfg.data.root)
        return None


def infer_mpp(cfg: ProtosegConfig, ds: PatchDataset) -> ProtosegConfig:
    """Fill ``run.mpp`` from the patch names (``MPP-0.2500``) when the config leaves it open."""
    if cfg.run.mpp is not None or not len(ds.records):
        return cfg
    mpp = parse_mpp(ds.records[0].name)
    if mpp is None:
        logger.warning("patch mpp unknown: set run.mpp so slide predictions use the right resolution")
        return cfg
    return replace(cfg, run=replace(cfg.run, mpp=mpp))


def iter_bank_samples(ds: PatchDataset, mpp: float | None) -> Iterator[Any]:
    """Training patches as bank samples (uint8 images + multi-hot labels + their file)."""
    from protoseg.bank import BankSample
    from protoseg.data.datasets import load_image

    for i, rec in enumerate(ds.records):
        label = tuple(int(v) for v in ds.label(i))
        yield BankSample(image=load_image(rec.image), label=label, source=str(rec.image), box=None, mpp=mpp)


def build_bank_from_config(cfg: ProtosegConfig, out: str | Path, encoder: Any | None = None) -> Any:
    """Build the image bank from the single-class training patches and save it to ``out``."""
    from protoseg.bank import build_bank, save_bank

    ds = open_split(cfg, Split.TRAIN)
    assert ds is not None
    cfg = infer_mpp(cfg, ds)
    encoder = encoder or encoder_from_config(cfg)
    bank = build_bank(iter_bank_samples(ds, cfg.run.mpp), ds.classes, encoder, k=cfg.bank.k,
                      n_per_cluster=cfg.bank.n_per_cluster, white_threshold=cfg.bank.white_threshold)
    save_bank(bank, out)
    logger.info("image bank with %d members saved to %s", len(bank.members), out)
    return bank


def _bank_for(cfg: ProtosegConfig, encoder: Any) -> Any | None:
    from protoseg.bank import load_bank

    if cfg.bank.path and Path(cfg.bank.path).exists():
        return load_bank(cfg.bank.path)
    if cfg.stage1.recipe is Recipe.PBIP:
        path = Path(cfg.bank.path) if cfg.bank.path else Path(cfg.run.out_dir) / "bank"
        logger.info("no image bank at %s: building one from the training patches", path)
        return build_bank_from_config(replace(cfg, bank=replace(cfg.bank, path=str(path))), path, encoder)
    return None


def train_stage1(cfg: ProtosegConfig, callbacks: Sequence[Callback] = (), cancel: CancelToken | None = None,
                 resume: bool = False) -> FitResult:
    """Train stage 1 as configured; checkpoints in ``<out_dir>/stage1/{last,best}.pt``."""
    train = open_split(cfg, Split.TRAIN, augment=cfg.data.augment)
    assert train is not None
    cfg = infer_mpp(cfg, train)
    val = open_split(cfg, Split.VAL)
    encoder = encoder_from_config(cfg) if cfg.stage1.recipe is not Recipe.CAM or cfg.stage1.addons else None
    bank = _bank_for(cfg, encoder) if cfg.stage1.recipe is not Recipe.CAM else None
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "stage1_config.yaml")
    trainer = Stage1Trainer(cfg, _subset(train, cfg.data.max_train, cfg.run.seed),
                            _subset(val, cfg.data.max_val, cfg.run.seed) if val is not None else None,
                            train.classes, bank=bank, encoder=encoder, callbacks=callbacks, cancel=cancel)
    return trainer.fit(resume=resume)


def best_or_last(folder: str | Path) -> Path:
    """``best.pt`` if validation produced one, else ``last.pt``."""
    folder = Path(folder)
    return folder / BEST if (folder / BEST).is_file() else folder / LAST


def make_pseudo_masks(cfg: ProtosegConfig, checkpoint: str | Path, out: str | Path | None = None,
                      progress: Callable[[int, int], None] | None = None) -> Path:
    """Export pseudo-masks of the training patches from a stage-1 checkpoint."""
    ckpt = load_checkpoint(checkpoint)
    train = open_split(cfg, Split.TRAIN)
    assert train is not None
    out = Path(out) if out is not None else Path(cfg.run.out_dir) / "pseudo"
    return export_pseudo_masks(ckpt, _subset(train, cfg.data.max_train, cfg.run.seed), out, cfg,
                               cfg.run.device, progress)


def train_stage2(cfg: ProtosegConfig, pseudo_dir: str | Path, callbacks: Sequence[Callback] = (),
                 cancel: CancelToken | None = None, resume: bool = False, stage1: str | Path | None = None) -> FitResult:
    """Train stage 2 on exported pseudo-masks; checkpoints in ``<out_dir>/stage2/``."""
    train = open_split(cfg, Split.TRAIN)
    assert train is not None
    cfg = infer_mpp(cfg, train)
    val = open_split(cfg, Split.VAL)
    images = _subset(train, cfg.data.max_train, cfg.run.seed)
    ds = PseudoMaskDataset(images, pseudo_dir, augment=cfg.data.augment, seed=cfg.run.seed)
    info = {"checkpoint": str(stage1)} if stage1 else {}
    trainer = Stage2Trainer(cfg, ds, _subset(val, cfg.data.max_val, cfg.run.seed) if val is not None else None,
                            train.classes, callbacks=callbacks, cancel=cancel, stage1_info=info)
    return trainer.fit(resume=resume)


def evaluate_checkpoint(cfg: ProtosegConfig, checkpoint: str | Path, split: Split = Split.TEST,
                        use_labels: bool = False) -> dict[str, float]:
    """Metrics of a checkpoint on a labelled split: stage 2 by argmax, stage 1 by its pseudo-masks
    (label-gated when ``use_labels``, as for pseudo-mask quality; score-gated otherwise)."""
    ckpt = load_checkpoint(checkpoint)
    ds = open_split(cfg, split)
    if ds is None:
        raise FileNotFoundError(f"no {split.value} split with masks under {cfg.data.root}")
    _check_classes(ckpt, ds.classes)
    device = select_device(cfg.run.device)
    model = ckpt.build_model().to(device)
    if ckpt.stage is Stage.STAGE1:
        return evaluate_pseudo(model, ds, ckpt.classes, cfg, device, use_labels=use_labels,  # type: ignore[arg-type]
                               boundary=True)
    return evaluate_segmentation(model, ds, ckpt.classes, device, cfg.data.batch_size, tta=cfg.stage2.tta,
                                 boundary=True)


def _check_classes(ckpt: Checkpoint, classes: ClassSpec) -> None:
    if tuple(ckpt.classes.names) != tuple(classes.names):
        from protoseg.train.checkpoint import CheckpointError

        raise CheckpointError(f"checkpoint classes {ckpt.classes.names} differ from the dataset's {classes.names}")


__all__ = [
    "best_or_last", "build_bank_from_config", "evaluate_checkpoint", "make_pseudo_masks", "open_split",
    "train_stage1", "train_stage2",
]
