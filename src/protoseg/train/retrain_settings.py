"""Settings of a retrain from corrections, torch-free so the Predict dock can show their defaults."""

from __future__ import annotations

import math
from dataclasses import dataclass

from protoseg.train.errors import TrainingError


@dataclass(frozen=True)
class RetrainSettings:
    """How a retrain runs; ``patch`` None = the checkpoint's patch size."""

    epochs: int = 3
    lr: float = 1e-3
    batch_size: int = 8
    patch: int | None = None
    replay: float = 2.0
    distill: float = 1.0
    balance: float = 0.5
    trust_reviewed: bool = True
    min_batches: int = 25
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        checks = (
            ("epochs", self.epochs >= 1),
            ("lr", math.isfinite(self.lr) and self.lr > 0),
            ("batch_size", self.batch_size >= 1),
            ("patch", self.patch is None or self.patch >= 16),
            ("replay", math.isfinite(self.replay) and 0 <= self.replay <= 100),
            ("distill", math.isfinite(self.distill) and 0 <= self.distill <= 100),
            ("balance", math.isfinite(self.balance) and 0 <= self.balance <= 1),
            ("min_batches", 1 <= self.min_batches <= 10_000),
        )
        for name, ok in checks:
            if not ok:
                raise TrainingError(
                    f"retrain setting {name}={getattr(self, name)!r} is out of range; see RetrainSettings"
                )
