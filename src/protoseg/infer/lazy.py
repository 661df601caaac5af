"""Lazy prediction pyramid: dask arrays whose chunks run the model only when read, LRU-cached.

Level 0 is at the model mpp; level k is a 2x reduction of level k-1 (see ``pyramid``). A chunk
computed once gives every class and the mask (they share one cache entry); tiles are cached too
so neighbouring chunks reuse the tiles they share. Results equal the batch OME-Zarr exactly.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import numpy as np

from protoseg.infer.cache import ByteLRU
from protoseg.infer.chunks import DEFAULT_CHUNK, SlideChunks, TissueLike
from protoseg.infer.predictor import Predictor
from protoseg.infer.pyramid import ChunkData, background_chunk, chunk_from_finer, chunk_from_scores
from protoseg.infer.reader import SlideLike

logger = logging.getLogger(__name__)
_ids = itertools.count()


class LazyPrediction:
    """Per-level ``probs`` (C+1, H, W) uint8 and ``mask`` (H, W) uint8 arrays computed on demand."""

    def __init__(
        self,
        predictor: Predictor,
        slide: SlideLike | str,
        *,
        slide_mpp: float | None = None,
        chunk: int = DEFAULT_CHUNK,
        tissue_only: bool = False,
        tissue: TissueLike | None = None,
        cache_bytes: int = 512 * 2**20,
    ) -> None:
        self.layout = SlideChunks(
            predictor, slide, slide_mpp=slide_mpp, chunk=chunk, tissue_only=tissue_only, tissue=tissue
        )
        self.predictor = predictor
        self.cache = ByteLRU(cache_bytes)
        self.chunks_computed = 0  # chunks (and chunk parts) computed, any level
        self._uid = next(_ids)

    @property
    def levels(self) -> list[tuple[int, int]]:
        """(width, height) of each level."""
        return self.layout.levels

    @property
    def mpp(self) -> float | None:
        """Microns per pixel of level 0 (None when neither model nor slide knows it)."""
        return self.layout.geom.mpp

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * 2**level

    # ------------------------------------------------------------------ computing
    def _tiles(self, keys: list) -> list[np.ndarray]:
        values = self.predictor.compute_tiles(self.layout.geom, [k[1] for k in keys])
        for v in values:
            v.flags.writeable = False
        return values

    def _compute(self, level: int, cy: int, cx: int) -> ChunkData:
        lay = self.layout
        if level == 0:
            if not lay.has_tissue(cy, cx):
                result = lay.background(cy, cx)
            else:
                indices = lay.tiles_for_chunk(cy, cx)
                tiles = self.cache.get_many([("tile", i) for i in indices], self._tiles)
                result = lay.finish(cy, cx, dict(zip(indices, tiles)))
        else:
            rows, cols = lay.chunk_grid(level - 1).shape
            kids = [
                [self.chunk(level - 1, r, c).probs for c in (2 * cx, 2 * cx + 1) if c < cols]
                for r in (2 * cy, 2 * cy + 1)
                if r < rows
            ]
            finer = np.concatenate([np.concatenate(row, axis=2) for row in kids], axis=1)
            result = chunk_from_finer(finer)
        result.probs.flags.writeable = False
        result.mask.flags.writeable = False
        self.chunks_computed += 1
        return result

    def chunk(self, level: int, cy: int, cx: int) -> ChunkData:
        """The chunk (level, row, col), computed once and cached."""
        if not 0 <= level < len(self.levels):
            raise IndexError(f"level {level} out of range 0..{len(self.levels) - 1}")
        return self.cache.get(("chunk", level, cy, cx), lambda: self._compute(level, cy, cx))

    def window(self, x0: int, y0: int, x1: int, y1: int) -> ChunkData:
        """Level-0 scores and mask of exactly the box [x0, x1) x [y0, y1), e.g. the viewport.

        Only the tiles under the box are computed (through the tile cache that chunks share), so an
        on-screen overlay costs what predicting that box costs, not the whole chunks around it; the
        values equal the level-0 chunks there bit for bit (same tiles, same blending order).
        """
        lay = self.layout
        x0, y0 = max(0, int(x0)), max(0, int(y0))
        x1, y1 = min(lay.width, int(x1)), min(lay.height, int(y1))
        if x1 <= x0 or y1 <= y0:
            raise IndexError(
                f"window {(x0, y0, x1, y1)} lies outside the level-0 prediction ({lay.width}x{lay.height})"
            )
        box = (x0, y0, x1 - x0, y1 - y0)
        indices = lay.geom.grid.tiles_for_box(box)
        tiles = self.cache.get_many([("tile", i) for i in indices], self._tiles)
        return chunk_from_scores(self.predictor.blend_box(lay.geom, box, dict(zip(indices, tiles))))

    def chunk_part(self, cy: int, cx: int, x0: int, y0: int, x1: int, y1: int) -> ChunkData:
        """Level-0 scores and mask of the part [x0, x1) x [y0, y1) (level-0 px, clipped) of chunk (cy, cx).

        E.g. the on-screen part of a chunk: only the tiles under it run, through the tile cache, so
        computing the rest of the chunk later never runs them again; the values equal that part of
        ``chunk(0, cy, cx)`` bit for bit. Not cached itself; counted in ``chunks_computed``.
        """
        bx, by, bw, bh = self.layout.grid0.box(cy, cx)
        x0, y0, x1, y1 = max(int(x0), bx), max(int(y0), by), min(int(x1), bx + bw), min(int(y1), by + bh)
        if x1 <= x0 or y1 <= y0:
            raise IndexError(f"part {(x0, y0, x1, y1)} lies outside level-0 chunk {(cy, cx)}")
        if self.layout.has_tissue(cy, cx):
            result = self.window(x0, y0, x1, y1)
        else:
            result = background_chunk(self.layout.channels, y1 - y0, x1 - x0)
        result.probs.flags.writeable = False
        result.mask.flags.writeable = False
        self.chunks_computed += 1
        return result

    def cached_chunk(self, level: int, cy: int, cx: int) -> ChunkData | None:
        """The chunk (level, row, col) if it is in the cache, else None; never runs the model."""
        return self.cache.peek(("chunk", level, cy, cx))

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (C+1, h, w) and mask (h, w) of a window of one level (assembled from chunks)."""
        c = self.layout.chunk
        probs = np.empty((self.layout.channels, y1 - y0, x1 - x0), np.uint8)
        mask = np.empty((y1 - y0, x1 - x0), np.uint8)
        for cy in range(y0 // c, -(-y1 // c)):
            for cx in range(x0 // c, -(-x1 // c)):
                data = self.chunk(level, cy, cx)
                ay0, ay1 = max(y0, cy * c), min(y1, cy * c + data.mask.shape[0])
                ax0, ax1 = max(x0, cx * c), min(x1, cx * c + data.mask.shape[1])
                src = (slice(ay0 - cy * c, ay1 - cy * c), slice(ax0 - cx * c, ax1 - cx * c))
                dst = (slice(ay0 - y0, ay1 - y0), slice(ax0 - x0, ax1 - x0))
                probs[(slice(None), *dst)] = data.probs[(slice(None), *src)]
                mask[dst] = data.mask[src]
        return probs, mask

    # ------------------------------------------------------------------ arrays
    def level_array(self, level: int, kind: str = "probs") -> LazyLevelArray:
        """Numpy-indexable array of one level (``kind`` = "probs" or "mask")."""
        return LazyLevelArray(self, level, kind)

    def probs(self, level: int = 0) -> Any:
        """dask array (C+1, H, W) uint8 of one level."""
        return self._dask(level, "probs")

    def mask(self, level: int = 0) -> Any:
        """dask array (H, W) uint8 of one level."""
        return self._dask(level, "mask")

    def probs_pyramid(self) -> list[Any]:
        return [self.probs(i) for i in range(len(self.levels))]

    def mask_pyramid(self) -> list[Any]:
        return [self.mask(i) for i in range(len(self.levels))]

    def class_pyramid(self, channel: int) -> list[Any]:
        """Per-level dask arrays (H, W) of one class's scores (e.g. a napari CAM layer)."""
        return [p[channel] for p in self.probs_pyramid()]

    def _dask(self, level: int, kind: str) -> Any:
        import dask.array as da

        arr = self.level_array(level, kind)
        c = self.layout.chunk
        chunks = (c, c) if kind == "mask" else (arr.shape[0], c, c)
        return da.from_array(
            arr,
            chunks=chunks,
            name=f"protoseg-lazy-{self._uid}-{kind}-{level}",
            lock=False,
            fancy=False,
            asarray=False,
            meta=np.empty((0,) * arr.ndim, np.uint8),
        )


class LazyLevelArray:
    """Array-like view (shape, dtype, basic slicing) of one level of a ``LazyPrediction``."""

    def __init__(self, lazy: LazyPrediction, level: int, kind: str) -> None:
        if kind not in ("probs", "mask"):
            raise ValueError(f"kind must be 'probs' or 'mask', got {kind!r}")
        self.lazy, self.level, self.kind = lazy, level, kind
        w, h = lazy.levels[level]
        self.shape = (h, w) if kind == "mask" else (lazy.layout.channels, h, w)
        self.dtype = np.dtype(np.uint8)
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (self.ndim - len(key))
        if len(key) != self.ndim:
            raise IndexError(f"too many indices for a {self.ndim}-d array")
        y0, y1, ystep = _norm(key[-2], self.shape[-2])
        x0, x1, xstep = _norm(key[-1], self.shape[-1])
        probs, mask = self.lazy.read(self.level, y0, y1, x0, x1)
        arr = (mask if self.kind == "mask" else probs)[..., ::ystep, ::xstep]
        final: list[Any] = [key[0]] if self.kind == "probs" else []
        final += [0 if isinstance(k, (int, np.integer)) else slice(None) for k in key[-2:]]
        return arr[tuple(final)]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype)


def _norm(index: Any, size: int) -> tuple[int, int, int]:
    """(start, stop, step) for an int or slice along an axis of ``size``."""
    if isinstance(index, (int, np.integer)):
        i = int(index) + (size if index < 0 else 0)
        if not 0 <= i < size:
            raise IndexError(f"index {index} out of range for size {size}")
        return i, i + 1, 1
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step < 1:
            raise IndexError("negative or zero steps are not supported")
        return start, max(start, stop), step
    raise IndexError(f"unsupported index {index!r}; use ints and slices")
