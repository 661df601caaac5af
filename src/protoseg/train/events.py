"""Training events and cancellation: what trainers emit (progress, losses) and how they are stopped."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from protoseg.errors import ProtosegError

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


class TrainingCancelled(ProtosegError):
    """Raised inside a trainer when its cancel token is set; the last checkpoint stays usable."""


class CancelToken:
    """Thread-safe cancel flag shared between a GUI/CLI and a running trainer."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise TrainingCancelled("training was cancelled; resume from the last checkpoint (last.pt)")


def emit(callbacks: Sequence[Callback], event: TrainEvent) -> None:
    """Deliver an event to every callback; a failing callback is logged, never kills training."""
    for cb in callbacks:
        try:
            cb(event)
        except Exception:  # noqa: BLE001 - user callbacks must not break a run
            logger.exception("training callback %r failed on %s", cb, event.kind.value)


class LossHistory:
    """Callback that records the loss curve (used by tests, the CLI summary and the napari plot)."""

    def __init__(self) -> None:
        self.steps: list[int] = []
        self.losses: list[dict[str, float]] = []
        self.metrics: list[tuple[int, dict[str, float]]] = []
        self.events: list[TrainEvent] = []

    def __call__(self, event: TrainEvent) -> None:
        self.events.append(event)
        if event.kind is EventKind.STEP:
            self.steps.append(event.step)
            self.losses.append(dict(event.losses))
        elif event.kind is EventKind.VALIDATION:
            self.metrics.append((event.epoch, dict(event.metrics)))
