"""End-to-end jobs from a config: open data, build/load the bank, train stage 1, pseudo-masks, stage 2, eval.

The CLI and the napari widgets call these; each returns paths/metrics and reports through callbacks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from protoseg.cancel import Cancelled, CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, save_config
from protoseg.data.records import Split
from protoseg.metrics import Protocol
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.outputs import check_replaceable
from protoseg.runtime import select_device
from protoseg.train import warm_start
from protoseg.train.bank_setup import bank_and_encoder, build_bank_from_config, with_default_bank
from protoseg.train.data_setup import (
    TrainingData,
    check_training_data,
    folder_data,
    open_split,
    region_data,
    subsample,
)
from protoseg.train.device_augment import stain_on_device
from protoseg.train.engine import BEST, LAST, FitResult
from protoseg.train.evaluation import evaluate_pseudo, evaluate_segmentation
from protoseg.train.events import Callback
from protoseg.train.pseudo import KIND as PSEUDO_KIND
from protoseg.train.pseudo import PseudoMaskDataset, export_pseudo_masks
from protoseg.train.runstate import check_new_run
from protoseg.train.stage1 import Stage1Trainer
from protoseg.train.stage2 import Stage2Trainer
from protoseg.train.stage2_init import stage1_source

logger = logging.getLogger(__name__)


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
    bank, encoder = bank_and_encoder(cfg, data)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train = subsample(data.train, cfg.data.max_train, cfg.run.seed)
    if warm_start.wanted(cfg):  # the backbone starts from self-supervised weights instead of random init
        try:
            weights = warm_start.warm_start_weights(cfg, train, cancel, callbacks)
        except Cancelled:
            return warm_start.cancelled(out / Stage.STAGE1.value / LAST, callbacks)
        cfg = replace(cfg, model=replace(cfg.model, weights=str(weights)))
    save_config(cfg, out / "stage1_config.yaml")
    trainer = Stage1Trainer(
        cfg,
        train,
        subsample(data.val, cfg.data.max_val, cfg.run.seed) if data.val is not None else None,
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
        subsample(data.train, cfg.data.max_train, cfg.run.seed),
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
    images = subsample(data.train, cfg.data.max_train, cfg.run.seed)
    _check_pseudo_classes(pseudo_dir, data.classes)
    # with data.augment_on_device Stage2Trainer jitters the stains batched
    ds = PseudoMaskDataset(images, pseudo_dir, cfg.data.augment, seed=cfg.run.seed, stain=not stain_on_device(cfg))
    stage1 = stage1 or stage1_source(cfg, pseudo_dir)
    info = {"checkpoint": str(stage1)} if stage1 else {}
    val = subsample(data.val, cfg.data.max_val, cfg.run.seed) if data.val is not None else None
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
