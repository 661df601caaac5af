"""Viewer-sized chunking and the lazy pyramid: 2x-downsampled levels a slide file does not store.

A slide whose coarsest stored level is larger than ``COARSEST_SIDE`` (single-level SVS/OME-TIFF, a
flat TIFF) gets extra levels, each the rounded 2x2 mean of the level above. A chunk of such a level
reads the matching 2x2 chunks of the finer level, which are cached (bytes-bounded LRU per slide), so
zooming out reads each stored pixel once and memory stays bounded whatever the slide size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np

from protoseg.slide.array import _FULL, RgbLevelLike, _axis, level_key

#: target chunk side for viewer reads (a multiple of the native tile near this)
VIEW_CHUNK = 1024
#: lazy levels are added until the coarsest level's longer side is at most this
COARSEST_SIDE = 1024
#: default bytes of computed lazy-level chunks kept per slide
CACHE_BYTES = 256 << 20
#: Most pixels of the stored level that lazy levels and thumbnails (hence tissue masks) are reduced from:
#: 2^34, e.g. 131072 x 131072, minutes of decoding. A slide whose coarsest stored level is larger (a flat
#: giant TIFF) is refused there with one line saying to convert it to a pyramidal TIFF.
MAX_OVERVIEW_PIXELS = 2**34


class LevelLike(Protocol):
    shape: tuple[int, int, int]

    def __getitem__(self, key: Any) -> np.ndarray: ...


def viewer_chunk(tile: int, target: int = VIEW_CHUNK) -> int:
    """The multiple of the native ``tile`` side closest to ``target`` (at least one tile)."""
    return int(tile) * max(1, round(target / max(1, int(tile))))


def lazy_level_shapes(width: int, height: int, coarsest: int = COARSEST_SIDE) -> list[tuple[int, int]]:
    """(w, h) of the extra levels below a (width, height) level: ceil halves until the longer side <= coarsest."""
    out: list[tuple[int, int]] = []
    w, h = int(width), int(height)
    while max(w, h) > coarsest:
        w, h = -(-w // 2), -(-h // 2)
        out.append((w, h))
    return out


def half(a: np.ndarray) -> np.ndarray:
    """uint8 (h, w, 3) -> (ceil(h/2), ceil(w/2), 3): rounded mean of the 2x2 (edge: 2x1, 1x1) pixels present."""
    h, w = a.shape[:2]
    he, we = h - h % 2, w - w % 2
    out = np.empty(((h + 1) // 2, (w + 1) // 2, a.shape[2]), np.uint8)
    if he and we:  # four strided uint16 adds: ~9x faster than a reshape-sum over two axes
        q = a[0:he:2, 0:we:2].astype(np.uint16)
        q += a[1:he:2, 0:we:2]
        q += a[0:he:2, 1:we:2]
        q += a[1:he:2, 1:we:2]
        q += 2
        q >>= 2
        out[: he // 2, : we // 2] = q
    if w % 2 and he:
        col = a[:he, -1].reshape(he // 2, 2, -1).sum(axis=1, dtype=np.uint16)
        out[: he // 2, -1] = (col + 1) >> 1
    if h % 2 and we:
        row = a[-1, :we].reshape(we // 2, 2, -1).sum(axis=1, dtype=np.uint16)
        out[-1, : we // 2] = (row + 1) >> 1
    if h % 2 and w % 2:
        out[-1, -1] = a[-1, -1]
    return out


class ChunkCache:
    """Thread-safe LRU of computed chunks, bounded by bytes."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = int(max_bytes)
        self._items: OrderedDict[Any, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:  # a copy in another process starts empty
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["max_bytes"])  # type: ignore[misc]

    def get(self, key: Any, compute: Callable[[], np.ndarray]) -> np.ndarray:
        with self._lock:
            hit = self._items.get(key)
            if hit is not None:
                self._items.move_to_end(key)
                return hit
        value = compute()  # outside the lock: other chunks proceed in parallel
        value.setflags(write=False)
        with self._lock:
            if key not in self._items and value.nbytes <= self.max_bytes:
                self._items[key] = value
                self._bytes += value.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= old.nbytes
        return value

    @property
    def nbytes(self) -> int:
        return self._bytes


class DownsampledLevelArray(RgbLevelLike):
    """(H, W, 3) uint8 array-like: the 2x reduction of ``parent``, computed per chunk and cached."""

    __slots__ = ("_cache", "_key", "chunk", "parent")

    def __init__(self, parent: LevelLike, chunk: int, cache: ChunkCache, key: Any) -> None:
        ph, pw = parent.shape[:2]
        self.parent = parent
        self._set_shape(-(-ph // 2), -(-pw // 2))
        self.chunk = int(chunk)
        self._cache = cache
        self._key = key

    @property
    def chunks(self) -> tuple[int, int, int]:
        return min(self.chunk, self.shape[0]), min(self.chunk, self.shape[1]), 3

    def _chunk(self, cy: int, cx: int) -> np.ndarray:
        c = self.chunk

        def compute() -> np.ndarray:
            return half(np.asarray(self.parent[2 * cy * c : 2 * (cy + 1) * c, 2 * cx * c : 2 * (cx + 1) * c]))

        return self._cache.get((self._key, cy, cx), compute)

    def __getitem__(self, key: Any) -> np.ndarray:
        key = level_key(key)
        y0, y1, ly = _axis(key[0], self.shape[0], "y")
        x0, x1, lx = _axis(key[1], self.shape[1], "x")
        c = self.chunk
        out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        for cy in range(y0 // c, -(-y1 // c)) if y1 > y0 else ():
            for cx in range(x0 // c, -(-x1 // c)) if x1 > x0 else ():
                data = self._chunk(cy, cx)
                ay0, ay1 = max(y0, cy * c), min(y1, cy * c + data.shape[0])
                ax0, ax1 = max(x0, cx * c), min(x1, cx * c + data.shape[1])
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = data[
                    ay0 - cy * c : ay1 - cy * c, ax0 - cx * c : ax1 - cx * c
                ]
        if ly is not _FULL or lx is not _FULL:
            out = out[ly, lx]
        ch = key[2]
        if not (isinstance(ch, slice) and ch == _FULL):
            if not isinstance(ch, slice):
                _axis(ch, 3, "channel")
            out = out[..., ch]
        return out
