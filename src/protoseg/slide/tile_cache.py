"""Bytes-bounded LRU of decoded native tiles, so overlapping region reads decode each tile once.

Model tiles overlap and rarely align with a slide's 256-px JPEG tiles, so a whole-slide run asked the
decoder for each native tile up to 4-9 times. openslide keeps a 32 MiB cache for the same reason; this is
the same bound for protoseg's direct TIFF reader. Thread-safe: decoding happens outside the lock (two threads
may decode one tile at once; both results are the same bytes).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

#: Default bound, as openslide's own tile cache.
DEFAULT_CACHE_BYTES = 32 << 20


class DecodedTileCache:
    """LRU of read-only decoded tiles keyed by (level, tile index), at most ``max_bytes`` in all."""

    def __init__(self, max_bytes: int = DEFAULT_CACHE_BYTES) -> None:
        self.max_bytes = max(0, int(max_bytes))
        self._tiles: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get_or_decode(self, key: Hashable, decode: Callable[..., np.ndarray], *args: Any) -> np.ndarray:
        """The cached tile for ``key``, or ``decode(*args)``'s result (cached when it fits the bound)."""
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
                self.hits += 1
                return tile
            self.misses += 1
        tile = decode(*args)
        if tile.nbytes > self.max_bytes:
            return tile
        tile.flags.writeable = False  # shared by every later read: nobody may change it
        with self._lock:
            if key not in self._tiles:
                self._tiles[key] = tile
                self._bytes += tile.nbytes
                while self._bytes > self.max_bytes:
                    _, old = self._tiles.popitem(last=False)
                    self._bytes -= old.nbytes
        return tile

    def clear(self) -> None:
        with self._lock:
            self._tiles.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes
