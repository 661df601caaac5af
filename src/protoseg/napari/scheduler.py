"""On-demand computation of ``LazyPrediction`` chunks for the overlays (Qt-free, one worker thread).

Only level-0 chunks (the model's resolution) are ever computed, and only those the current view asks
for; a chunk partly on screen is computed only under the view (its tiles, through the tile cache) and
completed if the view moves over the rest, so an overlay costs about what predicting the visible box
costs. Coarser levels show what is already computed, downsampled from the finer results as they arrive,
and never make the model run. Work that left the view is dropped; ``close()`` cancels the
``protoseg.cancel.CancelToken``.

A *region* (``predict_region``: "Predict this view" at any zoom) is different: its level-0 chunks are
computed whole, centre-out, after whatever the view asks for, whatever the view shows meanwhile, until done
or ``cancel_region()``; each one fills the coarser levels as it lands.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from protoseg.cancel import CancelToken

if TYPE_CHECKING:
    from protoseg.infer.lazy import LazyPrediction
    from protoseg.infer.pyramid import ChunkData

logger = logging.getLogger(__name__)

Key = tuple[int, int, int]  # (level, chunk row, chunk col)
Span = tuple[int, int, int, int]  # (y0, y1, x0, x1) pixels


@dataclass(frozen=True)
class PartialChunk:
    """A chunk known in part: ``covered`` marks the pixels it knows (a coarse chunk from the finer chunks
    computed so far, or a level-0 chunk computed only under the view)."""

    probs: np.ndarray  # (C+1, h, w) uint8
    mask: np.ndarray  # (h, w) uint8, class mask (meaningless where not covered)
    covered: np.ndarray  # (h, w) bool

    @property
    def nbytes(self) -> int:
        return int(self.probs.nbytes + self.mask.nbytes + self.covered.nbytes)


def downsample_covered(probs: np.ndarray, covered: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2x block means over the covered pixels only (rounded as ``infer.pyramid.downsample2``, so a fully
    covered input gives exactly the batch/lazy coarse level) and the coarse coverage (any pixel covered)."""
    c, h, w = probs.shape
    hp, wp = h + h % 2, w + w % 2
    weights = np.zeros((hp, wp), np.uint32)
    weights[:h, :w] = covered
    padded = np.zeros((c, hp, wp), np.uint32)
    padded[:, :h, :w] = probs
    padded *= weights
    s = padded.reshape(c, hp // 2, 2, wp // 2, 2).sum(axis=(2, 4))
    n = weights.reshape(hp // 2, 2, wp // 2, 2).sum(axis=(1, 3))
    out = ((2 * s + n) // np.maximum(2 * n, 1)).astype(np.uint8)
    return out, n > 0


class ChunkScheduler:
    """Computes the level-0 chunks the view asks for in one background thread, newest request first.

    ``get(0, ...)`` returns a cached chunk, else the part computed so far (a :class:`PartialChunk`) or
    None, queueing what the view still needs of it; ``get(k > 0, ...)`` never queues: it returns the lazy
    pyramid's chunk if cached, else a :class:`PartialChunk` built from what is computed (or None when
    nothing under it is). ``set_view`` names the pixels on screen (no level-0 chunk when the screen shows a
    coarser level): queued chunks outside are dropped, and a level-0 chunk partly on screen is computed
    only under the view (completed, from the cached tiles plus the missing ones, once the view has covered
    all of it). ``on_ready()`` is called from the worker thread after each computation. ``computed`` counts
    the level-0 computations (whole chunks or parts) this scheduler ran.
    """

    def __init__(
        self,
        lazy: LazyPrediction,
        on_ready: Callable[[], None] | None = None,
        max_pending: int = 4096,
        max_partial_bytes: int = 256 * 2**20,
    ) -> None:
        self.lazy, self.on_ready, self.max_pending = lazy, on_ready, int(max_pending)
        self.max_partial_bytes = int(max_partial_bytes)
        self.token = CancelToken()
        self._pending: OrderedDict[Key, None] = OrderedDict()
        self._failed: set[Key] = set()
        self._view: set[Key] | None = None
        self._view_span: Span | None = None  # level-0 pixels on screen (None: whole chunks)
        self._parts: OrderedDict[Key, PartialChunk] = OrderedDict()  # level-0 chunks computed in part (LRU)
        self._parts_bytes = 0
        self._shown: dict[Key, tuple[np.ndarray, np.ndarray]] = {}  # coarse (probs, covered) from finer results
        self._cond = threading.Condition()
        self._busy = False
        self._thread: threading.Thread | None = None
        self.computed = 0
        self.dropped = 0
        self.last_error: str | None = None
        self._region: OrderedDict[Key, None] = OrderedDict()  # "Predict this view": whole chunks, next last
        self.region_total = 0
        self.region_done = 0
        self.tiles_done = 0  # model tiles run for whole chunks, and the seconds they took: the measured rate
        self.tile_seconds = 0.0
        self._chunk_tiles: int | None = None

    @property
    def closed(self) -> bool:
        return self.token.cancelled

    @property
    def num_levels(self) -> int:
        return len(self.lazy.levels)

    def cached(self, level: int, cy: int, cx: int) -> ChunkData | None:
        """The lazy pyramid's chunk if already computed (never computes)."""
        return self.lazy.cached_chunk(level, cy, cx)

    def get(self, level: int, cy: int, cx: int) -> ChunkData | PartialChunk | None:
        """What can be shown of chunk (level, row, col) now; a missing level-0 chunk is queued."""
        data = self.cached(level, cy, cx)
        if data is not None:
            return data
        if level == 0:
            key = (0, cy, cx)
            with self._cond:
                part = self._parts.get(key)
                if part is not None:
                    self._parts.move_to_end(key)
                todo = part is None or self._todo(key, part) is not None
            if todo:
                self.request(key)
            return part
        with self._cond:
            shown = self._shown.get((level, cy, cx))
        if shown is None:
            return None
        probs, covered = shown
        return PartialChunk(probs, np.argmax(probs, axis=0).astype(np.uint8), covered)

    def request(self, key: Key) -> None:
        """Queue a level-0 chunk (coarser keys are ignored: they are never a reason to compute)."""
        if key[0] != 0:
            return
        with self._cond:
            if self.closed or key in self._failed or (self._view is not None and key not in self._view):
                return
            self._pending[key] = None
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
                self.dropped += 1
            self._start_worker()
            self._cond.notify_all()

    # ---- the view --------------------------------------------------------------------------------
    def chunks_in(self, level: int, y0: int, y1: int, x0: int, x1: int) -> set[Key]:
        """Level-0 chunk keys under the pixel window [y0:y1, x0:x1] of ``level`` (clipped to the slide)."""
        c, f = self.lazy.layout.chunk, 2**level
        rows, cols = self.lazy.layout.chunk_grid(0).shape
        r0, r1 = max(0, y0 * f // c), min(rows, -(-y1 * f // c))
        c0, c1 = max(0, x0 * f // c), min(cols, -(-x1 * f // c))
        return {(0, r, q) for r in range(r0, r1) for q in range(c0, c1)}

    def set_view(self, level: int, y0: int, y1: int, x0: int, x1: int) -> int:
        """The screen shows pixels [y0:y1, x0:x1] of ``level``: only level-0 chunks under them may be computed
        (none when ``level`` > 0). Queued chunks outside are dropped; returns how many were dropped."""
        view = self.chunks_in(0, y0, y1, x0, x1) if level == 0 else set()
        with self._cond:
            self._view = view
            self._view_span = (y0, y1, x0, x1) if level == 0 else None
            gone = [k for k in self._pending if k not in view]
            for k in gone:
                del self._pending[k]
            self.dropped += len(gone)
            self._cond.notify_all()
        if gone:
            logger.debug("overlay view moved: %d queued chunks dropped", len(gone))
        cy, cx = (y0 + y1) / 2 / self.lazy.layout.chunk, (x0 + x1) / 2 / self.lazy.layout.chunk
        for key in sorted(view, key=lambda k: -((k[1] + 0.5 - cy) ** 2 + (k[2] + 0.5 - cx) ** 2)):
            if self.cached(*key) is None:
                with self._cond:
                    todo = self._todo(key, self._parts.get(key))
                if todo is not None:
                    self.request(key)  # the centre ends on top of the queue: computed first
        return len(gone)

    # ---- a region ("Predict this view") ---------------------------------------------------------------
    def region_chunks(self, level: int, y0: int, y1: int, x0: int, x1: int) -> list[Key]:
        """Level-0 chunks under pixels [y0:y1, x0:x1] of ``level`` not computed yet, centre first."""
        keys = [k for k in self.chunks_in(level, y0, y1, x0, x1) if self.cached(*k) is None]
        f, c = 2**level, self.lazy.layout.chunk
        cy, cx = (y0 + y1) / 2 * f / c, (x0 + x1) / 2 * f / c
        return sorted(keys, key=lambda k: (k[1] + 0.5 - cy) ** 2 + (k[2] + 0.5 - cx) ** 2)

    def region_tiles(self, keys: Iterable[Key]) -> int:
        """About how many model tiles computing ``keys`` whole runs: chunks times the tiles of a whole chunk
        (geometry only, cheap for any view; chunks without tissue and cached tiles are counted too)."""
        if self._chunk_tiles is None:
            self._chunk_tiles = len(self.lazy.layout.tiles_for_chunk(0, 0))
        return len(list(keys)) * self._chunk_tiles

    @property
    def tiles_per_second(self) -> float | None:
        """The model's tile rate measured on this machine by this scheduler's whole-chunk work, or None."""
        return self.tiles_done / self.tile_seconds if self.tiles_done and self.tile_seconds > 0 else None

    def predict_region(self, keys: Iterable[Key]) -> int:
        """Compute these level-0 chunks whole in the background, in this order (centre first), after the
        view's own requests; replaces a region still running. Returns how many are queued."""
        keys = [k for k in keys if k[0] == 0 and self.cached(*k) is None]
        with self._cond:
            if self.closed:
                return 0
            self._region = OrderedDict((k, None) for k in reversed(keys))  # popped from the end: centre first
            self.region_total, self.region_done = len(keys), 0
            self._start_worker()
            self._cond.notify_all()
        return len(keys)

    def cancel_region(self) -> int:
        """Stop the region after the chunk being computed; returns how many chunks were left."""
        with self._cond:
            left = len(self._region)
            self._region.clear()
            self.region_total -= left
            self._cond.notify_all()
        return left

    @property
    def region_running(self) -> bool:
        with self._cond:
            return bool(self._region) or (self._busy and self.region_done < self.region_total)

    def _start_worker(self) -> None:  # caller holds the lock
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="protoseg-overlay", daemon=True)
            self._thread.start()

    # ---- worker ----------------------------------------------------------------------------------
    def _next(self) -> tuple[Key, bool] | None:
        """The next chunk and whether it is a region's (computed whole): the view's requests go first."""
        with self._cond:
            while not self._pending and not self._region and not self.closed:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait()
            if self.closed:
                return None
            self._busy = True
            if self._pending:
                return self._pending.popitem(last=True)[0], False
            return self._region.popitem(last=True)[0], True

    def _run(self) -> None:
        while (job := self._next()) is not None:
            key, whole = job
            try:
                done = self._whole(key) if whole else self._work(key)
            except Exception as exc:  # noqa: BLE001 - reported through last_error, never kills the viewer
                logger.warning("overlay chunk %s failed: %s", key, exc)
                self._failed.add(key)
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if not done:
                    continue
                self.computed += 1
            finally:
                if whole:
                    with self._cond:
                        self.region_done += 1
            if self.on_ready is not None and not self.closed:
                self.on_ready()

    def _count_tiles(self, tiles: int, seconds: float) -> None:
        """Feed the measured tile rate (tiles run from the cache count too: a slight overestimate)."""
        if tiles:
            with self._cond:
                self.tiles_done += tiles
                self.tile_seconds += seconds

    def _whole(self, key: Key) -> bool:
        """Compute a region's level-0 chunk whole (tiles already run come from the cache) and fold it into
        the coarser levels; its tiles and time feed the measured rate."""
        if self.cached(*key) is not None:
            return False
        _, cy, cx = key
        layout = self.lazy.layout
        tiles = len(layout.tiles_for_chunk(cy, cx)) if layout.has_tissue(cy, cx) else 0
        start = time.perf_counter()
        data = self.lazy.chunk(*key)
        self._count_tiles(tiles, time.perf_counter() - start)
        self._set_part(key, None)
        self._propagate(key, data.probs, None)
        return True

    def _work(self, key: Key) -> bool:
        """Compute what the view still needs of a level-0 chunk: the whole chunk when that completes it, else
        the part under the view (merged into the chunk's partial result). False when nothing was needed."""
        if self.cached(*key) is not None:
            return False
        with self._cond:
            part = self._parts.get(key)
            span = self._todo(key, part)
        if span is None:
            return False
        _, cy, cx = key
        bx, by, bw, bh = self.lazy.layout.grid0.box(cy, cx)
        y0, y1, x0, x1 = span
        covered = np.zeros((bh, bw), bool) if part is None else part.covered.copy()  # readers may hold the old
        covered[y0:y1, x0:x1] = True
        if covered.all():  # the whole chunk: its tiles already computed come from the cache
            return self._whole(key)
        box = (bx + x0, by + y0, x1 - x0, y1 - y0)
        tiles = len(self.lazy.layout.geom.grid.tiles_for_box(box)) if self.lazy.layout.has_tissue(cy, cx) else 0
        start = time.perf_counter()
        got = self.lazy.chunk_part(cy, cx, bx + x0, by + y0, bx + x1, by + y1)
        self._count_tiles(tiles, time.perf_counter() - start)
        if part is None:
            probs = np.zeros((got.probs.shape[0], bh, bw), np.uint8)
            mask = np.zeros((bh, bw), np.uint8)
        else:
            probs, mask = part.probs.copy(), part.mask.copy()
        probs[:, y0:y1, x0:x1] = got.probs
        mask[y0:y1, x0:x1] = got.mask
        for arr in (probs, mask, covered):
            arr.flags.writeable = False
        self._set_part(key, PartialChunk(probs, mask, covered))
        self._propagate(key, probs, covered)
        return True

    def _todo(self, key: Key, part: PartialChunk | None) -> Span | None:
        """Chunk pixels (y0, y1, x0, x1) the view still needs of a level-0 chunk (the box around those not
        computed yet), or None; the whole chunk when no view was set. Call with the lock held."""
        _, cy, cx = key
        bx, by, bw, bh = self.lazy.layout.grid0.box(cy, cx)
        span = (0, bh, 0, bw)
        if self._view_span is not None:
            vy0, vy1, vx0, vx1 = self._view_span
            span = (max(0, vy0 - by), min(bh, vy1 - by), max(0, vx0 - bx), min(bw, vx1 - bx))
        y0, y1, x0, x1 = span
        if y1 <= y0 or x1 <= x0:
            return None
        if part is None:
            return span
        missing = ~part.covered[y0:y1, x0:x1]
        rows, cols = np.flatnonzero(missing.any(axis=1)), np.flatnonzero(missing.any(axis=0))
        if rows.size == 0:
            return None
        return y0 + int(rows[0]), y0 + int(rows[-1]) + 1, x0 + int(cols[0]), x0 + int(cols[-1]) + 1

    def _set_part(self, key: Key, part: PartialChunk | None) -> None:
        """Store (or drop, with None) a level-0 chunk's partial result; the least recent go over the budget."""
        with self._cond:
            old = self._parts.pop(key, None)
            self._parts_bytes -= 0 if old is None else old.nbytes
            if part is not None:
                self._parts[key] = part
                self._parts_bytes += part.nbytes
            while self._parts_bytes > self.max_partial_bytes and len(self._parts) > 1:
                self._parts_bytes -= self._parts.popitem(last=False)[1].nbytes

    def _propagate(self, key: Key, probs: np.ndarray, covered: np.ndarray | None) -> None:
        """Fold a level-0 chunk computed so far (``covered``; None: all of it) into the coarse levels shown
        (its quadrant of each ancestor)."""
        _, cy, cx = key
        covered = np.ones(probs.shape[1:], bool) if covered is None else covered
        half = self.lazy.layout.chunk // 2
        for level in range(1, self.num_levels):
            small, small_cov = downsample_covered(probs, covered)
            parent = (level, cy // 2, cx // 2)
            _, _, w, h = self.lazy.layout.chunk_grid(level).box(parent[1], parent[2])
            oy, ox = (cy % 2) * half, (cx % 2) * half
            with self._cond:
                entry = self._shown.get(parent)
                if entry is None:
                    entry = (np.zeros((probs.shape[0], h, w), np.uint8), np.zeros((h, w), bool))
                buf, cov = entry[0].copy(), entry[1].copy()  # readers may hold the old arrays
                sh, sw = min(small.shape[1], h - oy), min(small.shape[2], w - ox)
                buf[:, oy : oy + sh, ox : ox + sw] = small[:, :sh, :sw]
                cov[oy : oy + sh, ox : ox + sw] = small_cov[:sh, :sw]
                self._shown[parent] = (buf, cov)
            probs, covered, cy, cx = buf, cov, parent[1], parent[2]

    # ---- waiting / closing -------------------------------------------------------------------------
    def pending(self) -> list[Key]:
        """Queued chunk keys, next first."""
        with self._cond:
            return list(reversed(self._pending))

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or computing (tests, scripts); False on timeout."""
        with self._cond:
            return self._cond.wait_for(
                lambda: self.closed or (not self._pending and not self._region and not self._busy), timeout
            )

    def compute_all(self, keys: Iterable[Key]) -> None:
        """Queue level-0 chunks regardless of the view (scripts; the GUI uses the view)."""
        with self._cond:
            self._view, self._view_span = None, None
        for k in keys:
            self.request(k)

    def close(self) -> None:
        """Cancel the token: drop queued chunks and stop the worker thread (after its current chunk)."""
        with self._cond:
            self.token.cancel()
            self._pending.clear()
            self._region.clear()
            self._cond.notify_all()
