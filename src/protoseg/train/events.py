"""Training events: what trainers emit (progress, losses, checkpoints) to their callbacks."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

logger = logging.getLogger(__name__)


class EventKind(str, Enum):
    """Lifecycle points at which a trainer notifies its callbacks."""

    START = "start"
    STEP = "step"
    EPOCH_END = "epoch_end"
    VALIDATION = "validation"
    CHECKPOINT = "checkpoint"
    END = "end"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class TrainEvent:
    """One notification; ``step``/``total_steps`` count optimiser steps over the whole run."""

    kind: EventKind
    stage: str
    epoch: int
    step: int
    total_steps: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    path: str | None = None
    message: str = ""

    @property
    def progress(self) -> float:
        """Fraction of the run completed, in [0, 1]."""
        return min(1.0, self.step / self.total_steps) if self.total_steps else 0.0


Callback = Callable[[TrainEvent], None]


def emit(callbacks: Sequence[Callback], event: TrainEvent) -> None:
    """Deliver an event to every callback; a failing callback is logged, never kills training."""
    for cb in callbacks:
        try:
            cb(event)
        except Exception:
            logger.exception("training callback %r failed on %s", cb, event.kind.value)
