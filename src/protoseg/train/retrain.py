"""Retrain from corrections: fine-tune a stage-2 checkpoint on the pixels a user corrected, without forgetting.

Loss: dense cross-entropy on patches of a patch-aligned grid wherever corrections exist: painted pixels
take the painted class; with ``trust_reviewed`` the unpainted pixels of regions marked reviewed take the class
the user was shown there (the store's ``accepted``; the parent's prediction for stores without it): the user
looked and left it, so it is confirmed; everything else is ``IGNORE_INDEX``.
Plus ``replay`` patches per corrected patch elsewhere on the same slides, distilled to the parent's scores
(``distill`` x KL(parent || model) per pixel, learning-without-forgetting style) so it keeps the parent's
behaviour, all classes included, wherever nobody corrected it. Few patches are repeated (new
flips and rotations) up to ``min_batches`` optimiser steps per epoch. Batch-norm statistics stay the parent's.
Runs on the shared ``Trainer`` (events, cancel, resume, run lock); the new checkpoint (``out_dir/best.pt``)
records its lineage: parent sha256, the corrections' and review digests and the settings
(``checkpoint_lineage``). The parent is never written.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from protoseg.cancel import Cancelled, CancelToken
from protoseg.classes import IGNORE_INDEX
from protoseg.corrections import CorrectionStore, open_corrections
from protoseg.errors import ProtosegError
from protoseg.losses.distill import distillation_kl
from protoseg.losses.noise_ce import segmentation_ce
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.train.correction_patches import PREPARE_STAGE, CorrectionPatches, prepare_patches
from protoseg.train.engine import BEST, LAST, OptimConfig, Trainer
from protoseg.train.errors import TrainingError
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.train.outcome import CheckpointFacts
from protoseg.train.retrain_settings import RetrainSettings
from protoseg.train.runstate import check_new_run

logger = logging.getLogger(__name__)

#: ``Checkpoint.extra`` key of a retrained checkpoint's lineage.
LINEAGE_KEY = "lineage"
#: Settings of a retrain given none.
DEFAULT_SETTINGS = RetrainSettings()


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_lineage(path: str | Path) -> dict[str, Any] | None:
    """The lineage a retrained checkpoint records (parent, parent_sha256, corrections, settings), else None."""
    value = load_checkpoint(path).extra.get(LINEAGE_KEY)
    return value if isinstance(value, dict) else None


def _label_counts(dataset: Dataset, channels: int) -> np.ndarray:
    """Labelled pixels per class over a ``CorrectionPatches``'s distinct patches."""
    counts = np.zeros(channels, np.int64)
    for patch in getattr(dataset, "patches", []):
        t = patch.target[patch.target != IGNORE_INDEX]
        counts += np.bincount(t, minlength=channels)[:channels]
    return counts


def balanced_class_weights(counts: np.ndarray, power: float) -> torch.Tensor | None:
    """Per-class CE weights ∝ share^-power over the labelled pixels, normalised to a pixel-weighted mean of 1
    (classes without pixels get 1); None when ``power`` is 0 or nothing is labelled."""
    counts = np.asarray(counts, np.float64)
    if power <= 0 or counts.sum() <= 0:
        return None
    share = counts / counts.sum()
    w = np.where(share > 0, np.power(np.maximum(share, 1e-12), -power), 1.0)
    w /= float((w * share).sum())
    return torch.tensor(w, dtype=torch.float32)


def _freeze_batchnorm(model: torch.nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


class RetrainTrainer(Trainer):
    """Fine-tunes the parent network on correction and replay patches; checkpoints carry the lineage."""

    stage = Stage.STAGE2.value

    def __init__(
        self,
        parent: Checkpoint,
        dataset: Dataset,
        out_dir: Path,
        settings: RetrainSettings,
        lineage: dict[str, Any],
        callbacks: Sequence[Callback] = (),
        cancel: CancelToken | None = None,
    ) -> None:
        optim = OptimConfig(
            epochs=settings.epochs,
            lr=settings.lr,
            weight_decay=1e-4,
            grad_clip=1.0,
            batch_size=settings.batch_size,
            num_workers=0,  # patches are in memory
            seed=settings.seed,
        )
        super().__init__(optim, out_dir, callbacks, cancel, settings.device)
        self.parent, self.lineage, self._ds = parent, lineage, dataset
        self.distill = settings.distill
        channels = parent.classes.num_classes + 1
        self.class_weight = balanced_class_weights(_label_counts(dataset, channels), settings.balance)
        self.net = parent.build_model()

    @property
    def model(self) -> torch.nn.Module:
        return self.net

    def make_optimizer(self, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
        """SGD with momentum: steps scale with the gradient, so pixels the parent already gets right move it
        little (Adam's normalised steps pushed every weight a full lr toward a handful of corrected pixels and
        collapsed the whole slide to one class)."""
        return torch.optim.SGD(params, lr=self.optim.lr, momentum=0.9, weight_decay=self.optim.weight_decay)

    @property
    def train_dataset(self) -> Dataset:
        return self._ds

    def training_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        _freeze_batchnorm(model)
        logits = model(batch["image"])
        ce = segmentation_ce(logits, batch["mask"].long(), weight=self.class_weight)
        kd = distillation_kl(logits, batch["soft"], batch["soft_weight"])
        loss = ce + self.distill * kd
        return loss, {"ce": float(ce.detach()), "kd": float(kd.detach())}

    def validate(self) -> dict[str, float]:
        return {}

    def _restore(self, run: Any) -> None:
        """Refuse to resume a ``last.pt`` retrained from another parent, other corrections or settings."""
        last = self.out_dir / LAST
        if last.is_file():
            old = load_checkpoint(last).extra.get(LINEAGE_KEY) or {}
            diffs = [
                k
                for k in ("parent_sha256", "corrections_digests", "review_digests", "settings")
                if old.get(k) != self.lineage[k]
            ]
            if diffs:
                raise TrainingError(
                    f"cannot resume from {last}: it was retrained with another {', '.join(diffs)}; use the same "
                    "parent, corrections and settings, or pass --overwrite to retrain from scratch"
                )
        super()._restore(run)

    def make_checkpoint(self, epoch: int, step: int, metrics: dict[str, float], extra: dict[str, Any]) -> Checkpoint:
        kept = {k: v for k, v in self.parent.extra.items() if k not in ("optimizer", "scaler", "rng", LINEAGE_KEY)}
        return self.parent.with_updates(
            state_dict={k: v.detach().cpu() for k, v in self.net.state_dict().items()},
            epoch=epoch,
            step=step,
            best_metric=None,
            metrics=metrics,
            extra={**kept, **extra, LINEAGE_KEY: self.lineage},
        )


def _open_stores(corrections: Sequence[str | Path], parent: Checkpoint) -> list[CorrectionStore]:
    if not corrections:
        raise TrainingError("no corrections given; pass at least one corrections store (--corrections)")
    stores = [open_corrections(path, mode="r") for path in corrections]
    for store in stores:
        if tuple(store.classes.names) != tuple(parent.classes.names):
            raise TrainingError(
                f"corrections {store.path} use classes {list(store.classes.names)} but the checkpoint has "
                f"{list(parent.classes.names)}; retrain the checkpoint the corrections were painted on."
            )
    if all(store.is_empty() for store in stores):
        raise TrainingError(
            f"no corrected pixels in {', '.join(str(s.path) for s in stores)}; paint corrections first."
        )
    return stores


def lineage_root(path: str | Path) -> Path:
    """The checkpoint a chain of retrains started from: follow each lineage's ``parent`` while that file still
    exists with the recorded sha256; ``path`` itself when it is no retrain (or its parent is gone or changed).

    Retraining the root on all corrections, rather than the last retrain on them again, keeps drift from
    compounding (each fine-tune on a few corrected blocks moved the class balance further) and makes the
    result depend only on the corrections, not on the order of retrains."""
    current = Path(path).expanduser().resolve()
    seen = {current}
    while True:
        lineage = load_checkpoint(current).extra.get(LINEAGE_KEY)
        if not isinstance(lineage, dict) or not lineage.get("parent"):
            return current
        parent = Path(str(lineage["parent"])).expanduser().resolve()
        if parent in seen or not parent.is_file() or file_sha256(parent) != lineage.get("parent_sha256"):
            if parent not in seen:
                logger.warning(
                    "retrain: %s's parent %s is missing or changed; retraining %s itself", current, parent, current
                )
            return current
        seen.add(parent)
        current = parent


def _lineage(parent_path: Path, stores: Sequence[CorrectionStore], settings: RetrainSettings) -> dict[str, Any]:
    import protoseg

    parent = load_checkpoint(parent_path)
    return {
        "kind": "retrain-from-corrections",
        "parent": str(parent_path),
        "parent_sha256": file_sha256(parent_path),
        "parent_lineage": parent.extra.get(LINEAGE_KEY),
        "corrections": [
            {"path": str(s.path.resolve()), "slide": s.slide, "digest": s.digest(), "counts": s.counts()}
            for s in stores
        ],
        "corrections_digests": [s.digest() for s in stores],
        "review_digests": [s.review_digest() for s in stores],
        "settings": asdict(settings),
        "protoseg": str(protoseg.__version__),
    }


def retrain_from_corrections(
    parent: str | Path,
    corrections: Sequence[str | Path],
    out_dir: str | Path,
    settings: RetrainSettings = DEFAULT_SETTINGS,
    callbacks: Sequence[Callback] = (),
    cancel: CancelToken | None = None,
    resume: bool = False,
    overwrite: bool = False,
) -> Path:
    """Fine-tune ``parent`` on ``corrections`` (stores, one per slide) into ``out_dir/best.pt`` (returned).

    ``out_dir`` must not be the parent's folder; an earlier retrain there is continued with ``resume`` or
    replaced with ``overwrite`` (refused otherwise). Cancelling raises ``Cancelled`` after keeping
    ``out_dir/last.pt`` for a resume.
    """
    cancel = cancel or CancelToken()
    # progress from the first moment: loading the parent and reading the stores take a while
    emit(callbacks, TrainEvent(EventKind.START, PREPARE_STAGE, 0, 0, 0, message="loading the checkpoint"))
    parent_path = Path(parent).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    ckpt = load_checkpoint(parent_path)
    if ckpt.stage is not Stage.STAGE2:
        raise TrainingError(
            f"{parent_path} is a {ckpt.stage.value} checkpoint; retrain from corrections needs a stage-2 checkpoint "
            "(the segmentation network the overlay shows)."
        )
    if out == parent_path.parent:
        raise TrainingError(
            f"--out {out} is the folder of the parent checkpoint {parent_path.name}; choose a new folder "
            "(a retrain never writes beside or over its parent)."
        )
    check_new_run(out, resume, overwrite)  # refuse before the slow preparation
    stores = _open_stores(corrections, ckpt)
    lineage = _lineage(parent_path, stores, settings)
    p = int(settings.patch or ckpt.patch_size)
    patches, n_corrected = prepare_patches(stores, ckpt, p, settings, callbacks, cancel)
    logger.info("retrain: %d corrected + %d replay patches of %d px", n_corrected, len(patches) - n_corrected, p)
    lineage["patches"] = {"corrected": n_corrected, "replay": len(patches) - n_corrected, "size": p}
    channels = ckpt.classes.num_classes + 1
    dataset = CorrectionPatches(patches, channels, min_len=settings.min_batches * settings.batch_size)
    trainer = RetrainTrainer(ckpt, dataset, out, settings, lineage, callbacks, cancel)
    result = trainer.fit(resume=resume, overwrite=overwrite)
    if result.cancelled:
        raise Cancelled(f"retrain cancelled; {result.last} keeps the progress: resume it with --resume")
    best = out / BEST
    return best if best.is_file() else result.last


def retrain_job(
    *,
    report: Callable[[TrainEvent], object],
    cancel: CancelToken,
    parent: str,
    corrections: list[str],
    out_dir: str,
    settings: RetrainSettings,
    resume: bool = False,
    overwrite: bool = False,
    from_root: bool = True,
) -> tuple[Path, CheckpointFacts]:
    """:func:`retrain_from_corrections` as a child-process job (``protoseg.child``): events go to ``report``;
    returns the new checkpoint and its facts (classes, mpp) so the viewer need not load it. ``from_root``:
    a retrained ``parent`` is retrained from its lineage root (``lineage_root``) on all the corrections."""
    base = lineage_root(parent) if from_root else Path(parent)
    path = retrain_from_corrections(
        base, corrections, out_dir, settings, callbacks=[report], cancel=cancel, resume=resume, overwrite=overwrite
    )
    try:
        ckpt = load_checkpoint(path)
    except (OSError, ValueError, ProtosegError) as exc:
        raise TrainingError(f"the retrained checkpoint {path} cannot be read ({exc}); retrain again") from None
    return path, CheckpointFacts(ckpt.classes, ckpt.mpp)


__all__ = [
    "LINEAGE_KEY",
    "RetrainSettings",
    "checkpoint_lineage",
    "lineage_root",
    "retrain_from_corrections",
    "retrain_job",
]
