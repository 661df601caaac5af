"""Run-time estimate of a training run from its first steps: epochs x steps per epoch x measured step time,
said once, so a run that would take hours says so up front (issue 24)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: Steps left out of the measurement: the first pays for loader start-up and lazy allocations.
WARMUP_STEPS = 1
#: Steps timed after the warm-up.
MEASURED_STEPS = 3


def format_duration(seconds: float) -> str:
    """``"3 h 58 min"``, ``"12 min 5 s"`` or ``"40 s"``."""
    s = max(0, round(seconds))
    h, rest = divmod(s, 3600)
    m, sec = divmod(rest, 60)
    if h:
        return f"{h} h {m} min"
    return f"{m} min {sec} s" if m else f"{sec} s"


@dataclass
class RunTimeEstimate:
    """Times steps ``WARMUP_STEPS + 1 ..`` of one ``fit`` and gives the estimate line once (``after_step``)."""

    stage: str
    epochs: int
    steps_per_epoch: int
    start_step: int = 0  #: global step the fit starts at (a resumed run)
    clock: Callable[[], float] = time.perf_counter
    _t0: float | None = field(default=None, init=False)
    _done: bool = field(default=False, init=False)

    @property
    def total(self) -> int:
        """Steps of the whole run (all epochs)."""
        return self.epochs * self.steps_per_epoch

    def after_step(self, step: int) -> str | None:
        """Call after each training step (global ``step``); returns the estimate line once, else None."""
        if self._done:
            return None
        ran = step - self.start_step
        if self.total - self.start_step <= WARMUP_STEPS + MEASURED_STEPS:
            self._done = True  # too short to be worth an estimate
            return None
        if ran == WARMUP_STEPS:
            self._t0 = self.clock()
        elif ran == WARMUP_STEPS + MEASURED_STEPS and self._t0 is not None:
            self._done = True
            per_step = (self.clock() - self._t0) / MEASURED_STEPS
            left = (self.total - step) * per_step
            return (
                f"{self.stage}: {per_step:.2f} s/step (steps {self.start_step + WARMUP_STEPS + 1}-{step}) x "
                f"{self.epochs} epochs x {self.steps_per_epoch} steps: about {format_duration(self.total * per_step)} "
                f"in all, {format_duration(left)} left, validation not included"
            )
        return None
