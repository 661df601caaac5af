"""The ``done`` resume record of a whole-slide prediction, written in batches: one zarr write every
``DONE_INTERVAL_S`` instead of one per chunk, never claiming a chunk before its data is written."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

#: Longest time a written chunk waits to be recorded as done (one record write instead of one per chunk).
DONE_INTERVAL_S = 0.5


class DoneRecord:
    """The ``done`` resume record kept in memory and written whole at most every ``interval`` seconds and by
    ``flush``; a chunk is marked only after its data was written, so the record never claims unwritten work.
    Not thread-safe: callers hold their bookkeeping lock."""

    def __init__(self, array: Any, interval: float = DONE_INTERVAL_S) -> None:
        self.array, self.interval = array, float(interval)
        self.marks = np.asarray(array[...]).astype(np.uint8)
        self._dirty = False
        self._last = time.monotonic()

    def mark(self, cy: int, cx: int) -> None:
        self.marks[cy, cx] = 1
        self._dirty = True
        if time.monotonic() - self._last >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            self.array[...] = self.marks
            self._dirty = False
        self._last = time.monotonic()
