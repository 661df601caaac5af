"""End-to-end jobs from a config: open data, build/load the bank, train stage 1, pseudo-masks, stage 2, eval.

The CLI and the napari widgets call these; each returns paths/metrics and reports through callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, Recipe, save_config
from protoseg.data.augment import default_augmentation
from protoseg.data.datasets import PatchDataset, open_dataset
from protoseg.data.layouts import parse_mpp
from protoseg.data.records import Split
from protoseg.metrics import Protocol
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.outputs import check_replaceable
from protoseg.runtime import select_device
from protoseg.train.device_augment import stain_on_device
from protoseg.train.engine import BEST, LAST, FitResult
from protoseg.train.evaluation import evaluate_pseudo, evaluate_segmentation
from protoseg.train.events import Callback
from protoseg.train.pseudo import KIND as PSEUDO_KIND
from protoseg.train.pseudo import PseudoMaskDataset, export_pseudo_masks
from protoseg.train.runstate import check_new_run
from protoseg.train.sampling import KeyedSubset
from protoseg.train.stage1 import Stage1Trainer, encoder_from_config
from protoseg.train.stage2 import Stage2Trainer
from protoseg.train.stage2_init import stage1_source

logger = logging.getLogger(__name__)


def _subset(ds: Dataset, limit: int | None, seed: int) -> Dataset:
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


def iter_bank_samples(ds: Dataset, mpp: float | None) -> Iterator[Any]:
    """Training patches as bank samples (uint8 images + multi-hot labels + their file or slide box)."""
    from protoseg.bank import BankSample

    records = getattr(ds, "records", None)
    for i in range(len(ds)):  # type: ignore[arg-type]
        if records is not None:  # folder patches: read the file itself (no augmentation)
            label = tuple(int(v) for v in ds.label(i))  # type: ignore[attr-defined]
            image = ds.image(i)  # type: ignore[attr-defined]  # resampled by data.scale, as training sees it
            yield BankSample(image=image, label=label, source=str(records[i].image), box=None, mpp=mpp)
            continue
        patch = ds.patches[i]  # type: ignore[attr-defined]
        yield BankSample(
            image=ds.read_patch(i),
            label=tuple(int(v) for v in patch.label),  # type: ignore[attr-defined]
            source=patch.slide_path,
            box=tuple(patch.box),
            mpp=mpp,
        )


def _folder_scale(cfg: ProtosegConfig, data: TrainingData) -> float | None:
    """``data.scale`` when the training patches come from a folder (it resamples them), else None."""
    return cfg.data.scale if getattr(data.train, "records", None) is not None else None


def build_bank_from_config(
    cfg: ProtosegConfig,
    out: str | Path,
    encoder: Any | None = None,
    data: TrainingData | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Any:
    """Build the image bank from the single-class training patches and save it to ``out``;
    ``progress(seen, total)`` after each embedded batch. ``out`` must be free, empty or a bank protoseg
    wrote, or with ``overwrite`` another protoseg output (checked before encoding)."""
    from protoseg.bank import build_bank, save_bank
    from protoseg.bank.store import check_bank_output

    check_bank_output(out, overwrite)

    if data is None:
        data = folder_data(cfg, augment=False)
    encoder = encoder or encoder_from_config(cfg)
    total = len(data.train)  # type: ignore[arg-type]
    bank = build_bank(
        iter_bank_samples(data.train, data.mpp),
        data.classes,
        encoder,
        k=cfg.bank.k,
        n_per_cluster=cfg.bank.n_per_cluster,
        white_threshold=cfg.bank.white_threshold,
        progress=(lambda seen: progress(seen, total)) if progress is not None else None,
        data_scale=_folder_scale(cfg, data),
    )
    save_bank(bank, out, overwrite=overwrite)
    logger.info("image bank with %d members saved to %s", len(bank.members), out)
    return bank


def with_default_bank(cfg: ProtosegConfig) -> ProtosegConfig:
    """PBIP without ``bank.path``: use ``<out_dir>/bank`` (built there when absent) so checkpoints record it."""
    if cfg.stage1.recipe is Recipe.PBIP and not cfg.bank.path:
        return replace(cfg, bank=replace(cfg.bank, path=str(Path(cfg.run.out_dir) / "bank")))
    return cfg


def _bank_and_encoder(cfg: ProtosegConfig, data: TrainingData) -> tuple[Any | None, Any | None]:
    """The bank at ``bank.path`` (for PBIP built there from the training patches when absent) and the
    encoder stage 1 needs: the bank's own, at the input size the bank records, whatever the patch size."""
    from protoseg.bank import load_bank

    needs_encoder = cfg.stage1.recipe is not Recipe.CAM or bool(cfg.stage1.addons)
    bank = None
    if cfg.stage1.recipe is not Recipe.CAM and cfg.bank.path and Path(cfg.bank.path).exists():
        bank = load_bank(cfg.bank.path)
        why = bank.resolution_mismatch(_folder_scale(cfg, data), data.mpp)
        if why:
            logger.warning(
                "image bank %s: %s, so its prototypes describe other pixel sizes than the training crops; "
                "rebuild it at the training resolution (protoseg bank build --set data.scale=%g; Image bank dock: "
                "'Folder patches × (resample)')",
                cfg.bank.path,
                why,
                cfg.data.scale,
            )
    elif cfg.stage1.recipe is Recipe.PBIP:
        logger.info("no image bank at %s: building one from the training patches", cfg.bank.path)
        encoder = encoder_from_config(cfg)
        return build_bank_from_config(cfg, cfg.bank.path, encoder, data), encoder
    return bank, (encoder_from_config(cfg, bank) if needs_encoder else None)


def train_stage1(
    cfg: ProtosegConfig,
    callbacks: Sequence[Callback] = (),
    cancel: CancelToken | None = None,
    resume: bool = False,
    data: TrainingData | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train stage 1 as configured (on ``data``, default the folder at ``data.root``);
    checkpoints in ``<out_dir>/stage1/{last,best}.pt`` (an earlier run's are replaced only with
    ``overwrite``, checked before anything is read or written)."""
    check_new_run(Path(cfg.run.out_dir) / Stage.STAGE1.value, resume, overwrite)
    data = data or folder_data(cfg)
    check_training_data(data, cancel)
    cfg = with_default_bank(replace(cfg, run=replace(cfg.run, mpp=data.mpp)))
    bank, encoder = _bank_and_encoder(cfg, data)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "stage1_config.yaml")
    trainer = Stage1Trainer(
        cfg,
        _subset(data.train, cfg.data.max_train, cfg.run.seed),
        _subset(data.val, cfg.data.max_val, cfg.run.seed) if data.val is not None else None,
        data.classes,
        bank=bank,
        encoder=encoder,
        callbacks=callbacks,
        cancel=cancel,
    )
    return trainer.fit(resume=resume, overwrite=overwrite)


def best_or_last(folder: str | Path) -> Path:
    """``best.pt`` if validation produced one, else ``last.pt``."""
    folder = Path(folder)
    return folder / BEST if (folder / BEST).is_file() else folder / LAST


def make_pseudo_masks(
    cfg: ProtosegConfig,
    checkpoint: str | Path,
    out: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
    data: TrainingData | None = None,
    overwrite: bool = False,
) -> Path:
    """Export pseudo-masks of the (un-augmented) training patches from a stage-1 checkpoint (a fresh
    ``pseudo-masks`` output folder; ``overwrite`` lets it replace another kind of protoseg output, never a
    folder holding files protoseg did not write)."""
    out = Path(out) if out is not None else Path(cfg.run.out_dir) / "pseudo"
    check_replaceable(out, PSEUDO_KIND, overwrite=overwrite, what="pseudo-mask folder")  # before any work
    ckpt = load_checkpoint(checkpoint)
    data = data or folder_data(replace(cfg, data=replace(cfg.data, scale=_checkpoint_scale(cfg, ckpt))), augment=False)
    _check_classes(ckpt, data.classes, str(checkpoint))
    return export_pseudo_masks(
        ckpt,
        _subset(data.train, cfg.data.max_train, cfg.run.seed),
        out,
        cfg,
        cfg.run.device,
        progress,
        overwrite=overwrite,
    )


def train_stage2(
    cfg: ProtosegConfig,
    pseudo_dir: str | Path,
    callbacks: Sequence[Callback] = (),
    cancel: CancelToken | None = None,
    resume: bool = False,
    stage1: str | Path | None = None,
    data: TrainingData | None = None,
    overwrite: bool = False,
) -> FitResult:
    """Train stage 2 on exported pseudo-masks (``data`` un-augmented: the pseudo-mask dataset augments
    image, mask and confidence together); checkpoints in ``<out_dir>/stage2/`` (an earlier run's are
    replaced only with ``overwrite``)."""
    check_new_run(Path(cfg.run.out_dir) / Stage.STAGE2.value, resume, overwrite)
    data = data or folder_data(cfg, augment=False)
    check_training_data(data, cancel)
    cfg = replace(cfg, run=replace(cfg.run, mpp=data.mpp))
    images = _subset(data.train, cfg.data.max_train, cfg.run.seed)
    _check_pseudo_classes(pseudo_dir, data.classes)
    # with data.augment_on_device Stage2Trainer jitters the stains batched
    ds = PseudoMaskDataset(images, pseudo_dir, cfg.data.augment, seed=cfg.run.seed, stain=not stain_on_device(cfg))
    stage1 = stage1 or stage1_source(cfg, pseudo_dir)
    info = {"checkpoint": str(stage1)} if stage1 else {}
    val = _subset(data.val, cfg.data.max_val, cfg.run.seed) if data.val is not None else None
    trainer = Stage2Trainer(cfg, ds, val, data.classes, callbacks=callbacks, cancel=cancel, stage1_info=info)
    return trainer.fit(resume=resume, overwrite=overwrite)


def evaluate_checkpoint(
    cfg: ProtosegConfig,
    checkpoint: str | Path,
    split: Split = Split.TEST,
    use_labels: bool = False,
    protocol: Protocol | str = Protocol.PBIP,
    label_min_share: float | None = None,
) -> dict[str, Any]:
    """Metrics of a checkpoint on a labelled split under ``protocol`` (named in the result as
    ``"protocol"``; ``"data_scale"``: the patch resampling it was applied at, its training one): stage 1 with
    ``use_labels`` by its label-gated pseudo-masks (the exported ones), stage 2 with ``use_labels`` by its
    prediction's argmax among each patch's labels and background, otherwise the label-free prediction a user
    gets from ``Predictor`` (``model.predict`` argmax).
    ``label_min_share``: with ``use_labels``, each patch's labels are the classes covering that share of its
    mask (as the tile baseline's); None: the dataset's labels (every class with a pixel in the mask)."""
    protocol = Protocol(protocol)
    ckpt = load_checkpoint(checkpoint)
    scale = _checkpoint_scale(cfg, ckpt)
    ds = open_split(cfg, split, scale=scale)
    if ds is None:
        raise FileNotFoundError(f"no {split.value} split with masks under {cfg.data.root}")
    _check_classes(ckpt, ds.classes)
    device = select_device(cfg.run.device)
    model = ckpt.build_model().to(device)
    if ckpt.stage is Stage.STAGE1 and use_labels:
        metrics = evaluate_pseudo(
            model,  # type: ignore[arg-type]
            ds,
            ckpt.classes,
            cfg,
            device,
            use_labels=True,
            boundary=True,
            protocol=protocol,
            label_min_share=label_min_share,
        )
    else:
        tta = cfg.stage2.tta and ckpt.stage is Stage.STAGE2
        metrics = evaluate_segmentation(
            model,
            ds,
            ckpt.classes,
            device,
            cfg.data.batch_size,
            tta=tta,
            boundary=True,
            protocol=protocol,
            use_labels=use_labels,
            label_min_share=label_min_share,
        )
    if use_labels:
        metrics["label_min_share"] = label_min_share  # None: every class with a pixel in the mask
    return {"protocol": protocol.value, "data_scale": scale, **metrics}


def _checkpoint_scale(cfg: ProtosegConfig, ckpt: Checkpoint) -> float:
    """The patch-folder scale a checkpoint is applied at: the one it was trained at (``data.scale``), said once
    when the run's config asks for another."""
    if ckpt.data_scale != cfg.data.scale:
        logger.info(
            "patches resampled by %g, the data.scale this checkpoint was trained at (the config says %g)",
            ckpt.data_scale,
            cfg.data.scale,
        )
    return ckpt.data_scale


def _check_classes(ckpt: Checkpoint, classes: ClassSpec, source: str = "checkpoint") -> None:
    if tuple(ckpt.classes.names) != tuple(classes.names):
        from protoseg.models.checkpoint import CheckpointError

        raise CheckpointError(
            f"{source} was trained on classes {list(ckpt.classes.names)} but the dataset has "
            f"{list(classes.names)}; use a checkpoint trained on this dataset's classes (or the matching data.root)"
        )


def _check_pseudo_classes(pseudo_dir: str | Path, classes: ClassSpec) -> None:
    """Refuse pseudo-masks exported for another class set (their indices would mean other classes)."""
    import json

    from protoseg.train.pseudo import MANIFEST, PseudoMaskError

    manifest = Path(pseudo_dir) / MANIFEST
    try:
        names = json.loads(manifest.read_text())["classes"]["names"]
    except (OSError, ValueError, KeyError, TypeError):
        return  # missing or old manifests are reported by PseudoMaskDataset
    if list(names) != list(classes.names):
        raise PseudoMaskError(
            f"pseudo-masks in {pseudo_dir} were exported for classes {list(names)} but the dataset has "
            f"{list(classes.names)}; re-run `protoseg pseudo` with a stage-1 checkpoint of this dataset"
        )


__all__ = [
    "TrainingData",
    "best_or_last",
    "build_bank_from_config",
    "evaluate_checkpoint",
    "folder_data",
    "make_pseudo_masks",
    "open_split",
    "region_data",
    "train_stage1",
    "train_stage2",
    "with_default_bank",
]
