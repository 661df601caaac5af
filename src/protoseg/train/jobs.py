"""Whole training jobs for GUIs: data from a folder or tagged slide regions, stage 1, then optionally
pseudo-masks and stage 2, all stopped by one cancel token and reported through one callback list."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from protoseg.cancel import Cancelled, CancelToken
from protoseg.config import ProtosegConfig
from protoseg.data.regions import RegionSource
from protoseg.errors import ProtosegError
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.train.outcome import CheckpointFacts, JobOutcome
from protoseg.train.pipeline import (
    TrainingData,
    best_or_last,
    build_bank_from_config,
    folder_data,
    make_pseudo_masks,
    region_data,
    train_stage1,
    train_stage2,
    with_default_bank,
)
from protoseg.train.runstate import check_new_run

logger = logging.getLogger(__name__)

PSEUDO_STAGE = "pseudo"


def source_data(cfg: ProtosegConfig, source: RegionSource | None, augment: bool | None = None) -> TrainingData:
    """Training data of a job: patches tiled over ``source`` regions, or the dataset folder ``data.root``."""
    if source is None:
        return folder_data(cfg, augment=augment)
    return region_data(cfg, list(source.regions), source.classes, source.mpp, source.fallback_mpp, augment)


def _pseudo(
    cfg: ProtosegConfig,
    checkpoint: Path,
    data: TrainingData,
    callbacks: Sequence[Callback],
    cancel: CancelToken,
) -> Path:
    """Pseudo-masks of ``data`` from ``checkpoint`` in ``<out_dir>/pseudo`` (rewritten whole unless up to date)."""
    out = Path(cfg.run.out_dir) / "pseudo"

    def progress(done: int, total: int) -> None:
        emit(callbacks, TrainEvent(EventKind.STEP, PSEUDO_STAGE, 0, done, total))
        cancel.raise_if_cancelled()

    emit(
        callbacks,
        TrainEvent(
            EventKind.START,
            PSEUDO_STAGE,
            0,
            0,
            len(data.train),  # type: ignore[arg-type]
            message="exporting pseudo-masks",
        ),
    )
    path = make_pseudo_masks(cfg, checkpoint, out, progress, data)
    emit(
        callbacks,
        TrainEvent(
            EventKind.END,
            PSEUDO_STAGE,
            0,
            len(data.train),
            len(data.train),  # type: ignore[arg-type]
            path=str(path),
        ),
    )
    return path


def run_training(
    cfg: ProtosegConfig,
    regions: RegionSource | None = None,
    stage2: bool = False,
    resume: bool = False,
    callbacks: Sequence[Callback] = (),
    cancel: CancelToken | None = None,
    overwrite: bool = False,
) -> JobOutcome:
    """Stage 1 on ``regions`` (or the folder ``data.root``); with ``stage2`` also pseudo-masks + stage 2.
    Both stage folders are checked first: an earlier run's checkpoints are replaced only with ``overwrite``."""
    cancel = cancel or CancelToken()
    cfg = with_default_bank(cfg)
    for stage in ("stage1", "stage2") if stage2 else ("stage1",):
        check_new_run(Path(cfg.run.out_dir) / stage, resume, overwrite)
    s1 = train_stage1(cfg, callbacks, cancel, resume, data=source_data(cfg, regions, None), overwrite=overwrite)
    ckpt1 = best_or_last(Path(cfg.run.out_dir) / "stage1")
    if s1.cancelled or not stage2:
        return JobOutcome(s1, None, None, ckpt1, s1.best_metric, s1.cancelled)
    plain = source_data(cfg, regions, False)
    try:
        pseudo = _pseudo(cfg, ckpt1, plain, callbacks, cancel)
    except Cancelled:
        emit(callbacks, TrainEvent(EventKind.CANCELLED, PSEUDO_STAGE, 0, 0, 0, message="cancelled"))
        logger.warning("cancelled while exporting pseudo-masks; stage-1 checkpoint: %s", ckpt1)
        return JobOutcome(s1, None, None, ckpt1, s1.best_metric, True)
    s2 = train_stage2(cfg, pseudo, callbacks, cancel, resume, stage1=ckpt1, data=plain, overwrite=overwrite)
    ckpt2 = best_or_last(Path(cfg.run.out_dir) / "stage2")
    return JobOutcome(s1, s2, pseudo, ckpt2, s2.best_metric, s2.cancelled)


def training_job(
    *,
    report: Callable[[TrainEvent], object],
    cancel: CancelToken,
    cfg: ProtosegConfig,
    regions: RegionSource | None = None,
    stage2: bool = False,
    resume: bool = False,
    overwrite: bool = False,
) -> tuple[JobOutcome, CheckpointFacts | None]:
    """:func:`run_training` as a child-process job (``protoseg.child``): events go to ``report``; returns the
    outcome and the facts of its checkpoint (None when unreadable), so the viewer need not load it."""
    outcome = run_training(
        cfg, regions, stage2=stage2, resume=resume, callbacks=[report], cancel=cancel, overwrite=overwrite
    )
    from protoseg.models.checkpoint import load_checkpoint

    try:
        ckpt = load_checkpoint(outcome.checkpoint)
    except (OSError, ValueError, ProtosegError) as exc:
        logger.info("could not read %s: %s", outcome.checkpoint, exc)
        return outcome, None
    return outcome, CheckpointFacts(ckpt.classes, ckpt.mpp)


def build_bank_job(
    cfg: ProtosegConfig,
    out: str | Path,
    regions: RegionSource | None = None,
    progress: Callable[[int, int], None] | None = None,
    encoder: Any | None = None,
) -> Any:
    """Build the image bank from the folder ``data.root`` or from ``regions`` and save it to ``out``."""
    return build_bank_from_config(cfg, out, encoder, source_data(cfg, regions, False), progress)


__all__ = ["PSEUDO_STAGE", "JobOutcome", "RegionSource", "build_bank_job", "run_training", "training_job"]
