"""Training data from a config: folder splits (resampled by ``data.scale``, subsampled, augmented), tagged
slide regions, their µm per pixel, and the checks before training starts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig
from protoseg.data.augment import default_augmentation
from protoseg.data.datasets import PatchDataset, open_dataset
from protoseg.data.layouts import parse_mpp
from protoseg.data.records import Split
from protoseg.train.sampling import KeyedSubset

logger = logging.getLogger(__name__)


def subsample(ds: Dataset, limit: int | None, seed: int) -> Dataset:
    """At most ``limit`` patches of ``ds``, drawn once from ``seed`` (``data.max_train`` / ``max_val``)."""
    if limit is None or limit >= len(ds):  # type: ignore[arg-type]
        return ds
    idx = np.random.default_rng(seed).choice(len(ds), size=limit, replace=False)  # type: ignore[arg-type]
    return KeyedSubset(ds, sorted(int(i) for i in idx))  # forwards the trainer's augmentation seeds


def _train_augmentation(cfg: ProtosegConfig) -> Any:
    """Per-sample training augmentation; its stain jitter is left to the trainer with ``data.augment_on_device``."""
    return default_augmentation(seed=cfg.run.seed, with_stain=not cfg.data.augment_on_device)


def open_split(
    cfg: ProtosegConfig, split: Split, augment: bool = False, scale: float | None = None
) -> PatchDataset | None:
    """One split of ``data.root`` resampled by ``scale`` (default ``data.scale``; None when a val/test split is
    absent)."""
    transform = _train_augmentation(cfg) if augment else None
    try:
        return open_dataset(
            cfg.data.root, split, cfg.data.layout, transform=transform, scale=cfg.data.scale if scale is None else scale
        )
    except Exception:
        if split is Split.TRAIN:
            raise
        logger.warning("no usable %s split in %s; skipping validation", split.value, cfg.data.root)
        return None


#: Dataset folders whose unknown patch mpp was already reported in this process (said once per command).
_MPP_WARNED: set[str] = set()


def infer_mpp(cfg: ProtosegConfig, ds: PatchDataset) -> ProtosegConfig:
    """Fill ``run.mpp`` (the model's µm/px) from the patch names (``MPP-0.2500``) divided by ``data.scale``
    when the config leaves it open; when neither gives it, warn once per dataset folder naming the option."""
    if cfg.run.mpp is not None or not len(ds.records):
        return cfg
    mpp = parse_mpp(ds.records[0].name)
    if mpp is None:
        if str(ds.root) not in _MPP_WARNED:
            _MPP_WARNED.add(str(ds.root))
            logger.warning(
                "patch mpp unknown for %s (no MPP-x.xxxx in the file names): set it with --set run.mpp=<µm per "
                "pixel the model sees: the files' divided by data.scale> (or run: {mpp: ...} in --config) so slide "
                "predictions use the training resolution",
                ds.root,
            )
        return cfg
    return replace(cfg, run=replace(cfg.run, mpp=mpp / ds.scale))


@dataclass(frozen=True)
class TrainingData:
    """Datasets of one training job: folder patches or slide regions tagged in napari/GeoJSON."""

    train: Dataset
    val: Dataset | None
    classes: ClassSpec
    mpp: float | None


def folder_data(cfg: ProtosegConfig, augment: bool | None = None) -> TrainingData:
    """Train (augmented as configured) and val splits of ``data.root``."""
    train = open_split(cfg, Split.TRAIN, augment=cfg.data.augment if augment is None else augment)
    assert train is not None
    mpp = infer_mpp(cfg, train).run.mpp
    return TrainingData(train, open_split(cfg, Split.VAL), train.classes, mpp)


def check_training_data(data: TrainingData, cancel: CancelToken | None = None) -> None:
    """Open every image and mask of folder datasets before the first epoch (``protoseg.data.check``):
    a DatasetCheckError names the bad files instead of a crash mid-epoch; counts per class are logged."""
    from protoseg.data.check import DatasetReport, check_split

    sets = [ds for ds in (data.train, data.val) if isinstance(ds, PatchDataset)]
    if not sets:
        return  # slide regions are validated when they are tiled
    report = DatasetReport(
        str(sets[0].root), sets[0].layout, sets[0].classes.names, tuple(check_split(ds, cancel) for ds in sets)
    )
    for split in report.splits:
        logger.info("dataset check: %s", split.lines()[0])
        for warning in split.warnings:
            logger.warning("dataset check, %s: %s", split.split.value, warning)
    report.raise_if_bad()


def region_data(
    cfg: ProtosegConfig,
    regions: Sequence[Any],
    classes: ClassSpec,
    mpp: float,
    fallback_mpp: float | None = None,
    augment: bool | None = None,
) -> TrainingData:
    """Patches tiled densely (``dense_stride``) over tagged slide regions at the training patch size and
    ``mpp``, read on the fly (no val masks: validation is skipped); logs the count per class and the
    regions too small for a patch, and refuses regions that give no patch at all."""
    from protoseg.data.errors import RegionError
    from protoseg.data.region_dataset import WsiRegionDataset, dense_stride

    if cfg.data.scale != 1:
        raise RegionError(
            f"data.scale={cfg.data.scale:g} resamples patch folders; tagged regions are read at the training "
            "resolution run.mpp: set that (e.g. twice the µm/px for half the resolution) and data.scale=1"
        )
    use_aug = cfg.data.augment if augment is None else augment
    ds = WsiRegionDataset(
        regions,
        classes,
        mpp=mpp,
        patch_size=cfg.data.patch_size,
        stride=dense_stride(cfg.data.patch_size),
        seed=cfg.run.seed,
        fallback_mpp=fallback_mpp,
        transform=_train_augmentation(cfg) if use_aug else None,
    )
    logger.info("training regions: %s", ds.tiling.summary())
    if ds.tiling.too_small:
        logger.warning("%d tagged region(s) too small for one patch", len(ds.tiling.too_small))
    if not len(ds):
        raise RegionError(f"no training patches: {ds.tiling.summary()}; draw larger regions or lower data.patch_size")
    return TrainingData(ds, None, classes, mpp)


__all__ = [
    "TrainingData",
    "check_training_data",
    "folder_data",
    "infer_mpp",
    "open_split",
    "region_data",
    "subsample",
]
