"""Background computation of ``LazyPrediction`` chunks for the overlays (Qt-free, one worker thread).

The scheduler never blocks its caller: napari's (possibly synchronous) slicing gets a cached chunk or None,
and the chunk is queued for the worker. Its work stops through a ``protoseg.cancel.CancelToken``.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING

from protoseg.cancel import CancelToken

if TYPE_CHECKING:
    from protoseg.infer.lazy import LazyPrediction
    from protoseg.infer.pyramid import ChunkData

logger = logging.getLogger(__name__)

Key = tuple[int, int, int]  # (level, chunk row, chunk col)


class ChunkScheduler:
    """Computes chunks of a ``LazyPrediction`` in one background thread, most recently requested first.

    ``get`` never computes: it returns a cached chunk or None after queueing it, so napari's (possibly
    synchronous) slicing never waits for the model. A coarse chunk is queued behind its four finer
    chunks, so every job is one model chunk at most and newer requests (the current view) overtake.
    ``on_ready()`` is called from the worker thread after each computed chunk. ``close()`` cancels
    ``token`` (the scheduler's ``CancelToken``): queued chunks are dropped and the worker stops after
    its current chunk.
    """

    def __init__(
        self,
        lazy: LazyPrediction,
        on_ready: Callable[[], None] | None = None,
        max_pending: int = 4096,
    ) -> None:
        self.lazy, self.on_ready, self.max_pending = lazy, on_ready, int(max_pending)
        self.token = CancelToken()
        self._pending: OrderedDict[Key, None] = OrderedDict()
        self._expanded: set[Key] = set()
        self._failed: set[Key] = set()
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self.computed = 0
        self.last_error: str | None = None

    @property
    def closed(self) -> bool:
        return self.token.cancelled

    def cached(self, level: int, cy: int, cx: int) -> ChunkData | None:
        """The chunk if already computed (never computes)."""
        return self.lazy.cached_chunk(level, cy, cx)

    def get(self, level: int, cy: int, cx: int) -> ChunkData | None:
        """The chunk if already computed, else None (and the chunk is queued)."""
        data = self.cached(level, cy, cx)
        if data is None:
            self.request((level, cy, cx))
        return data

    def request(self, key: Key) -> None:
        with self._cond:
            if self.closed or key in self._failed:
                return
            self._pending[key] = None
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protoseg-overlay", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _children(self, key: Key) -> list[Key]:
        level, cy, cx = key
        rows, cols = self.lazy.layout.chunk_grid(level - 1).shape
        return [(level - 1, r, c) for r in (2 * cy, 2 * cy + 1) for c in (2 * cx, 2 * cx + 1) if r < rows and c < cols]

    def _next(self) -> Key | None:
        with self._cond:
            while not self._pending and not self.closed:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait()
            if self.closed:
                return None
            self._busy = True
            return self._pending.popitem(last=True)[0]

    def _run(self) -> None:
        while (key := self._next()) is not None:
            if self.cached(*key) is not None:
                continue
            if key[0] > 0 and self._defer(key):
                continue
            try:
                self.lazy.chunk(*key)
            except Exception as exc:  # noqa: BLE001 - reported through last_error, never kills the viewer
                logger.warning("overlay chunk %s failed: %s", key, exc)
                self._failed.add(key)
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                self.computed += 1
            if self.on_ready is not None and not self.closed:
                self.on_ready()

    def _defer(self, key: Key) -> bool:
        """Queue a coarse chunk behind its missing finer chunks; False when it can be computed now."""
        missing = [k for k in self._children(key) if self.cached(*k) is None]
        if any(k in self._failed for k in missing):
            self._failed.add(key)
            return True
        with self._cond:
            fresh = [k for k in missing if k not in self._pending]
        if not missing or (fresh and key in self._expanded):  # children computed but evicted: do it in one go
            return False
        if fresh:
            self._expanded.add(key)
        for k in [key, *missing]:  # children end on top: computed first
            self.request(k)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or computing (tests, scripts); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or (not self._pending and not self._busy), timeout)

    def close(self) -> None:
        """Cancel the token: drop queued chunks and stop the worker thread (after its current chunk)."""
        with self._cond:
            self.token.cancel()
            self._pending.clear()
            self._cond.notify_all()
