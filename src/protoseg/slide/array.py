"""``SlideLevelArray``: a thin, thread-safe numpy-style view of one slide level for ``dask.array``.

Any basic index ``[y, x, c]`` is served by ONE backend region read of its bounding box, so a
chunk-aligned slice costs one native-tile read and a whole-level slice one big read (what openslide
itself does), with no zarr event loop or byte copies in between. Follows numpy indexing semantics
(slices clamp to the level, ints drop an axis); edge chunks are simply the clipped tiles.
"""

from __future__ import annotations

import operator
from typing import TYPE_CHECKING, Any

import numpy as np

from protoseg.slide.errors import SlideRequestError

if TYPE_CHECKING:
    from protoseg.slide.slide import Slide

_FULL = slice(None)


def _reopen(path: str, backend: str, level: int) -> SlideLevelArray:
    """Unpickling helper: reopen the slide in the new process (e.g. a dask.distributed worker)."""
    from protoseg.slide.opener import open_slide

    return SlideLevelArray(open_slide(path, backend=backend), level)


def level_key(key: Any) -> tuple[Any, Any, Any]:
    """A numpy-style index of an (H, W, 3) level as exactly three entries (Ellipsis and short keys filled)."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        i = next(j for j, k in enumerate(key) if k is Ellipsis)
        key = key[:i] + (_FULL,) * (3 - len(key) + 1) + key[i + 1 :]
    if len(key) > 3:
        raise IndexError(f"too many indices for a (H, W, 3) slide level: {len(key)}")
    return key + (_FULL,) * (3 - len(key))


def _axis(key: Any, n: int, axis: str) -> tuple[int, int, Any]:
    """(start, stop, local index) for one spatial axis: read [start, stop) then apply the local index."""
    if isinstance(key, slice):
        if key.step is None or key.step == 1:  # fast path: dask always sends these
            start, stop, _ = key.indices(n)
            return start, max(start, stop), _FULL
        rng = range(*key.indices(n))
        if not rng:
            return 0, 0, _FULL
        lo, hi = min(rng[0], rng[-1]), max(rng[0], rng[-1]) + 1
        return lo, hi, slice(None, None, rng.step)  # the read spans exactly lo..hi-1
    try:
        i = operator.index(key)
    except TypeError:
        raise IndexError(
            f"slide arrays support ints, slices and '...' only, got {type(key).__name__} on the {axis} "
            "axis; read the bounding box and index the numpy result instead"
        ) from None
    if not -n <= i < n:
        raise IndexError(f"index {i} is out of bounds for the {axis} axis of size {n}")
    i %= n
    return i, i + 1, 0


class RgbLevelLike:
    """The numpy-style protocol napari and dask need from an (H, W, 3) uint8 level: ``shape``, ``dtype``,
    ``ndim``, ``size``, ``nbytes``, ``len`` and ``np.asarray``; subclasses add ``chunks`` and ``__getitem__``."""

    __slots__ = ("dtype", "ndim", "shape")

    def _set_shape(self, height: int, width: int) -> None:
        self.shape: tuple[int, int, int] = (int(height), int(width), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key: Any) -> np.ndarray:
        raise NotImplementedError

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * 3

    @property
    def nbytes(self) -> int:
        return self.size

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = self[:, :, :]
        return out if dtype is None else out.astype(dtype, copy=False)


class SlideLevelArray(RgbLevelLike):
    """Read-only (H, W, 3) uint8 array-like of one level; safe to index from many threads at once."""

    __slots__ = ("_read", "_slide", "level", "tile_size")

    def __init__(self, slide: Slide, level: int) -> None:
        slide._check_level(level)
        self._slide = slide
        # the backend's in-bounds reader, bound once; geometry is checked here, not per read. It returns
        # contiguous RGB: a zero-copy view of openslide's RGBA buffer saves ~0.15 ms per tile but makes
        # dask's concatenation of a viewport ~20x slower (strided copies), so it is not used
        self._read = slide._backend.read
        self.level = int(level)
        w, h = slide.level_dimensions[self.level]
        self._set_shape(h, w)
        self.tile_size: tuple[int, int] = slide.tile_size(self.level)  # (w, h), the natural chunking

    @property
    def chunks(self) -> tuple[int, int, int]:
        """Native tile shape (th, tw, 3), clipped to the level."""
        tw, th = self.tile_size
        return min(th, self.shape[0]) or 1, min(tw, self.shape[1]) or 1, 3

    def __getitem__(self, key: Any) -> np.ndarray:
        key = level_key(key)
        h, w = self.shape[0], self.shape[1]
        y0, y1, ly = _axis(key[0], h, "y")
        x0, x1, lx = _axis(key[1], w, "x")
        if self._slide._closed:
            raise SlideRequestError(f"slide {self._slide.path} is closed; open it again with open_slide()")
        if y1 > y0 and x1 > x0:
            out = self._read(self.level, x0, y0, x1 - x0, y1 - y0)
        else:
            out = np.empty((y1 - y0, x1 - x0, 3), np.uint8)
        if ly is not _FULL or lx is not _FULL:
            out = out[ly, lx]
        c = key[2]
        if not (isinstance(c, slice) and c == _FULL):
            if not isinstance(c, slice):
                _axis(c, 3, "channel")  # validate it like numpy would
            out = out[..., c]
        return out

    def __repr__(self) -> str:
        return f"SlideLevelArray({str(self._slide.path)!r}, level={self.level}, shape={self.shape})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_reopen, (str(self._slide.path), self._slide.backend.value, self.level))
