"""What a training run hands back: plain, torch-free records (a GUI unpickles them from a child process
without importing the training stack)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protoseg.classes import ClassSpec


@dataclass(frozen=True)
class FitResult:
    """Where the run left its checkpoints and what it reached."""

    last: Path
    best: Path | None
    best_metric: float | None
    epochs_done: int
    steps_done: int
    cancelled: bool
    seconds: float
    selection_metric: str | None = None  # what best_metric measures (e.g. label_free_mIoU); None without validation


@dataclass(frozen=True)
class JobOutcome:
    """What a training job produced; ``checkpoint`` is the one to predict with (best, else last)."""

    stage1: FitResult
    stage2: FitResult | None
    pseudo_dir: Path | None
    checkpoint: Path
    metric: float | None
    cancelled: bool


@dataclass(frozen=True)
class CheckpointFacts:
    """What a viewer shows of a checkpoint (its classes and resolution), sent along so it need not load it."""

    classes: ClassSpec
    mpp: float | None
