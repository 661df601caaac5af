"""Progressive slide pyramid arrays for the viewer (Qt-free): reads on the GUI thread never wait for pixels.

A :class:`ProgressiveLoader` wraps one slide's pyramid (``Slide.pyramid_arrays()`` entries) in
:class:`ProgressiveLevel` array-likes. When ``nonblocking()`` is true (the GUI thread), a read returns at
once: loaded chunks are exact, missing ones show a placeholder (the finest coarser level already loaded,
upsampled by pixel repetition, else white) and are queued to 1-2 background threads, newest request
first; ``on_ready()`` is called from a worker after each loaded chunk so the GUI can refresh. Anywhere
else (scripts, tests, workers, async slicing) a read blocks and returns the exact pixels.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from protoseg.cancel import Cancelled, CancelToken
from protoseg.slide.array import RgbLevelLike, _axis, level_key
from protoseg.slide.lazy_pyramid import LevelLike, half

logger = logging.getLogger(__name__)

Key = tuple[int, int, int]  # (level, chunk row, chunk col)
#: default bytes of loaded chunks kept per slide (the coarsest level is kept on top of this)
CACHE_BYTES = 128 << 20
#: seconds an idle worker thread waits for work before it exits (a later request starts a new one)
IDLE_EXIT_S = 30.0
#: niceness of the worker threads (Linux): decoding yields the CPU to the GUI thread
WORKER_NICE = 10


def never() -> bool:
    """The default ``nonblocking`` policy: every read blocks and is exact."""
    return False


def _lower_priority(nice: int) -> None:
    """Give the calling thread a lower CPU priority where the OS allows it per thread (Linux)."""
    if nice > 0 and sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):  # not permitted: keep the default priority
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), nice)


class ProgressiveLoader:
    """Loads pyramid chunks in background threads for the :class:`ProgressiveLevel` arrays of one slide.

    ``levels`` are (array-like, chunk side) pairs, finest first. Chunks of the coarsest level are loaded
    before any other and never evicted (they are the placeholder of last resort); the others live in a
    bytes-bounded LRU. A GUI read of a finer level replaces the queued chunks of the finer levels (work
    that left the view is dropped, counted in ``dropped``). ``close()`` cancels ``token``: workers stop.
    """

    def __init__(
        self,
        levels: Sequence[tuple[LevelLike, int]],
        on_ready: Callable[[], None] | None = None,
        nonblocking: Callable[[], bool] = never,
        workers: int = 2,
        max_bytes: int = CACHE_BYTES,
        nice: int = WORKER_NICE,
    ) -> None:
        if not levels:
            raise ValueError("a progressive pyramid needs at least one level")
        self.bases = [base for base, _ in levels]
        self.chunk_sides = [max(1, int(c)) for _, c in levels]
        self.on_ready, self.nonblocking = on_ready, nonblocking
        self.workers, self.max_bytes, self.nice = max(1, int(workers)), int(max_bytes), int(nice)
        self.coarsest = len(self.bases) - 1
        self.token = CancelToken()
        self.arrays = [ProgressiveLevel(self, k) for k in range(len(self.bases))]
        self._cond = threading.Condition()
        self._cache: OrderedDict[Key, np.ndarray] = OrderedDict()  # finer levels, LRU
        self._pinned: dict[Key, np.ndarray] = {}  # the coarsest level
        self._bytes = 0
        self._pending: OrderedDict[Key, None] = OrderedDict()  # newest last
        self._inflight: set[Key] = set()
        self._failed: set[Key] = set()
        self._supporting: set[Key] = set()  # queued because a coarser chunk being computed needs them
        self._live = 0  # worker threads running
        self.loaded = 0  # chunks loaded (and stored) by the workers
        self.dropped = 0  # queued chunks dropped because the view moved on
        self.last_error: str | None = None

    # ---- geometry --------------------------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.token.cancelled

    def grid(self, level: int) -> tuple[int, int]:
        """(rows, cols) of chunks of ``level``."""
        h, w = self.bases[level].shape[:2]
        c = self.chunk_sides[level]
        return -(-h // c), -(-w // c)

    def box(self, key: Key) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of chunk ``key`` in its level's pixels (edge chunks clipped)."""
        level, cy, cx = key
        h, w = self.bases[level].shape[:2]
        c = self.chunk_sides[level]
        return cy * c, min(h, (cy + 1) * c), cx * c, min(w, (cx + 1) * c)

    def keys_in(self, level: int, y0: int, y1: int, x0: int, x1: int) -> list[Key]:
        """Chunk keys under pixels [y0:y1, x0:x1] of ``level``, row-major."""
        if y1 <= y0 or x1 <= x0:
            return []
        c = self.chunk_sides[level]
        return [(level, cy, cx) for cy in range(y0 // c, -(-y1 // c)) for cx in range(x0 // c, -(-x1 // c))]

    # ---- the cache -------------------------------------------------------------------------------
    def cached(self, key: Key) -> np.ndarray | None:
        """The loaded chunk, or None (never loads)."""
        with self._cond:
            return self._peek(key)

    def _peek(self, key: Key) -> np.ndarray | None:  # caller holds the lock
        if key[0] == self.coarsest:
            return self._pinned.get(key)
        hit = self._cache.get(key)
        if hit is not None:
            self._cache.move_to_end(key)
        return hit

    def is_loaded(self, level: int, cy: int, cx: int) -> bool:
        return self.cached((level, cy, cx)) is not None

    def coarsest_complete(self) -> bool:
        """Whether every chunk of the coarsest level is loaded (it is pinned: once true, true for good)."""
        rows, cols = self.grid(self.coarsest)
        with self._cond:
            return len(self._pinned) >= rows * cols

    def _store(self, key: Key, data: np.ndarray) -> None:
        data.setflags(write=False)
        with self._cond:
            if self.closed:
                return
            self.loaded += 1
            if key[0] == self.coarsest:
                self._pinned[key] = data
            elif key not in self._cache and data.nbytes <= self.max_bytes:
                self._cache[key] = data
                self._bytes += data.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._cache.popitem(last=False)
                    self._bytes -= old.nbytes

    @property
    def nbytes(self) -> int:
        """Bytes of loaded chunks held (the coarsest level included)."""
        with self._cond:
            return self._bytes + sum(a.nbytes for a in self._pinned.values())

    # ---- GUI reads ----------------------------------------------------------------------------------
    def window(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels [y0:y1, x0:x1] of ``level`` without waiting: loaded chunks exact, missing ones a
        placeholder, queued (the chunks nearest the window's centre load first)."""
        out = np.empty((max(0, y1 - y0), max(0, x1 - x0), 3), np.uint8)
        missing: list[Key] = []
        for key in self.keys_in(level, y0, y1, x0, x1):
            by0, by1, bx0, bx1 = self.box(key)
            ay0, ay1, ax0, ax1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
            dst = out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
            data = self.cached(key)
            if data is not None:
                dst[...] = data[ay0 - by0 : ay1 - by0, ax0 - bx0 : ax1 - bx0]
            else:
                missing.append(key)
                self._placeholder(level, ay0, ay1, ax0, ax1, dst)
        if missing:
            cy, cx = (y0 + y1) / 2 / self.chunk_sides[level], (x0 + x1) / 2 / self.chunk_sides[level]
            missing.sort(key=lambda k: -((k[1] + 0.5 - cy) ** 2 + (k[2] + 0.5 - cx) ** 2))
            self.request(level, missing)
        return out

    def _placeholder(self, level: int, y0: int, y1: int, x0: int, x1: int, dst: np.ndarray) -> None:
        """Fill ``dst`` (pixels [y0:y1, x0:x1] of ``level``) from the finest coarser level loaded there."""
        h, w = self.bases[level].shape[:2]
        for coarse in range(level + 1, len(self.bases)):
            ch, cw = self.bases[coarse].shape[:2]
            ys = np.minimum(((np.arange(y0, y1) + 0.5) * (ch / h)).astype(np.intp), ch - 1)
            xs = np.minimum(((np.arange(x0, x1) + 0.5) * (cw / w)).astype(np.intp), cw - 1)
            src = self._assemble(coarse, int(ys[0]), int(ys[-1]) + 1, int(xs[0]), int(xs[-1]) + 1)
            if src is not None:
                dst[...] = src[ys - ys[0]][:, xs - xs[0]]
                return
        dst.fill(255)  # nothing coarser loaded yet: white, like glass

    def _assemble(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        """Pixels [y0:y1, x0:x1] of ``level`` from loaded chunks only; None when one is missing."""
        keys = self.keys_in(level, y0, y1, x0, x1)
        parts = [self.cached(k) for k in keys]
        if any(p is None for p in parts):
            return None
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for key, data in zip(keys, parts):
            by0, by1, bx0, bx1 = self.box(key)
            ay0, ay1, ax0, ax1 = max(y0, by0), min(y1, by1), max(x0, bx0), min(x1, bx1)
            out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = data[ay0 - by0 : ay1 - by0, ax0 - bx0 : ax1 - bx0]
        return out

    # ---- the queue ---------------------------------------------------------------------------------
    def request(self, level: int, keys: Sequence[Key]) -> None:
        """Queue ``keys`` of ``level`` (the last one loads first). A finer level's request is the new view:
        queued chunks of finer levels not in it are dropped; the coarsest level's chunks are never dropped."""
        with self._cond:
            if self.closed:
                return
            if level != self.coarsest:
                wanted = set(keys)
                keep = wanted | self._supporting
                gone = [k for k in self._pending if k[0] != self.coarsest and k not in keep]
                for k in gone:
                    del self._pending[k]
                self.dropped += len(gone)
            for key in (k for k in keys if k not in self._inflight and k not in self._failed):
                self._pending[key] = None
                self._pending.move_to_end(key)
            self._start_workers()
            self._cond.notify_all()

    def prefetch(self, level: int | None = None) -> None:
        """Queue every chunk of ``level`` (default: the coarsest, for the thumbnail and the zoomed-out view)."""
        lvl = self.coarsest if level is None else int(level) % len(self.bases)
        rows, cols = self.grid(lvl)
        todo = [(lvl, r, c) for r in range(rows) for c in range(cols) if not self.is_loaded(lvl, r, c)]
        if todo:
            self.request(lvl, todo[::-1])

    def pending(self) -> list[Key]:
        """Queued chunk keys, next first (coarsest-level chunks go before all others)."""
        with self._cond:
            return sorted(reversed(self._pending), key=lambda k: k[0] != self.coarsest)

    def _start_workers(self) -> None:
        while self._live < min(self.workers, len(self._pending)):  # caller holds the lock
            self._live += 1
            threading.Thread(target=self._run, name="protoseg-slide-loader", daemon=True).start()

    def _next(self) -> Key | None:
        """The next chunk to load (coarsest level first, then the newest request), or None: exit."""
        with self._cond:
            while True:
                while not self._pending and not self.closed:
                    if not self._cond.wait(IDLE_EXIT_S) and not self._pending:
                        break
                if self.closed or not self._pending:
                    self._live -= 1
                    self._cond.notify_all()
                    return None
                key = next((k for k in reversed(self._pending) if k[0] == self.coarsest), None)
                if key is None:
                    key = self._pending.popitem(last=True)[0]
                else:
                    del self._pending[key]
                self._supporting.discard(key)
                if key not in self._inflight and self._peek(key) is None:
                    self._inflight.add(key)
                    return key

    def _run(self) -> None:
        _lower_priority(self.nice)
        while (key := self._next()) is not None:
            try:
                if self.cached(key) is None:
                    self._compute(key)
            except Cancelled:
                pass
            except Exception as exc:  # noqa: BLE001 - reported through last_error; the placeholder stays
                logger.warning("slide chunk %s failed to load: %s", key, exc)
                with self._cond:
                    self._failed.add(key)
                    self.last_error = f"{type(exc).__name__}: {exc}"
            finally:
                with self._cond:
                    self._inflight.discard(key)
                    self._cond.notify_all()
            if self.on_ready is not None and not self.closed:
                self.on_ready()

    def _compute(self, key: Key) -> np.ndarray:
        """Load chunk ``key`` (in a worker) and store it. A lazy 2x level is reduced from the finer level's
        chunks as this loader caches them, so a stored level is decoded once for the view and the levels below."""
        self.token.raise_if_cancelled("loading the slide")
        level, cy, cx = key
        base, c = self.bases[level], self.chunk_sides[level]
        if level and getattr(base, "parent", None) is self.bases[level - 1] and self.chunk_sides[level - 1] == c:
            rows, cols = self.grid(level - 1)
            ys, xs = range(2 * cy, min(rows, 2 * cy + 2)), range(2 * cx, min(cols, 2 * cx + 2))
            self._support([(level - 1, r, q) for r in ys for q in xs][::-1])  # an idle worker may help
            quads = [[self._obtain((level - 1, r, q)) for q in xs] for r in ys]
            data = half(np.concatenate([np.concatenate(row, axis=1) for row in quads], axis=0))
        else:
            y0, y1, x0, x1 = self.box(key)
            data = np.ascontiguousarray(base[y0:y1, x0:x1], dtype=np.uint8)
        self._store(key, data)
        return data

    def _support(self, keys: list[Key]) -> None:
        """Queue the finer chunks a coarser one is reduced from, on top and safe from view changes."""
        with self._cond:
            for key in keys:
                if key not in self._inflight and self._peek(key) is None:
                    self._pending[key] = None
                    self._pending.move_to_end(key)
                    self._supporting.add(key)
            self._start_workers()
            self._cond.notify_all()

    def _obtain(self, key: Key) -> np.ndarray:
        """Chunk ``key`` from the cache, from another worker loading it, or computed here."""
        with self._cond:
            while True:
                hit = self._peek(key)
                if hit is not None:
                    return hit
                if key not in self._inflight:
                    self._inflight.add(key)
                    break
                self._cond.wait()
        try:
            return self._compute(key)
        finally:
            with self._cond:
                self._inflight.discard(key)
                self._cond.notify_all()

    # ---- waiting / closing ---------------------------------------------------------------------------
    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or loading (tests, scripts); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self.closed or (not self._pending and not self._inflight), timeout)

    @property
    def threads(self) -> int:
        """Worker threads running now."""
        with self._cond:
            return self._live

    def close(self, timeout: float | None = None) -> bool:
        """Cancel the token, drop the queue and the cache; with ``timeout``, wait that long for the workers
        to exit (True when none is left). Later reads block and are exact."""
        with self._cond:
            self.token.cancel()
            self._pending.clear()
            self._supporting.clear()
            self._cache.clear()
            self._pinned.clear()
            self._bytes = 0
            self._cond.notify_all()
            return self._live == 0 if timeout is None else self._cond.wait_for(lambda: self._live == 0, timeout)


class ProgressiveLevel(RgbLevelLike):
    """Read-only (H, W, 3) uint8 array-like of one pyramid level, served through a :class:`ProgressiveLoader`."""

    __slots__ = ("base", "level", "loader")

    def __init__(self, loader: ProgressiveLoader, level: int) -> None:
        self.loader, self.level = loader, int(level)
        self.base = loader.bases[self.level]
        self._set_shape(*self.base.shape[:2])

    @property
    def chunks(self) -> tuple[int, int, int]:
        """The loader's chunk shape (th, tw, 3), clipped to the level."""
        c = self.loader.chunk_sides[self.level]
        return min(c, self.shape[0]) or 1, min(c, self.shape[1]) or 1, 3

    def __getitem__(self, key: Any) -> np.ndarray:
        loader = self.loader
        if loader.closed or not loader.nonblocking():
            return np.asarray(self.base[key])
        key = level_key(key)
        y0, y1, ly = _axis(key[0], self.shape[0], "y")
        x0, x1, lx = _axis(key[1], self.shape[1], "x")
        return loader.window(self.level, y0, y1, x0, x1)[ly, lx, key[2]]

    def __deepcopy__(self, memo: dict[int, Any]) -> ProgressiveLevel:
        return self  # read-only: napari's Duplicate Layer deep-copies layer data (the loader holds locks)

    def __repr__(self) -> str:
        return f"ProgressiveLevel(level={self.level}, shape={self.shape}, base={self.base!r})"
