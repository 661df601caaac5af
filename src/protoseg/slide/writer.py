"""Pyramidal tiled TIFF writer (tifffile) that openslide ("generic-tiff") and tiffslide open with mpp.

Each level is a top-level tiled page (one ``write`` per level, halving each time) with
ResolutionUnit=CENTIMETER and resolution 1e4/mpp; SubIFD pyramids are seen as one level by openslide.
Both writers stream tile by tile: each tile of a level is encoded and reduced 2x into the next level
as it goes, so no level is copied whole (in memory for ``write_pyramidal_tiff``, in temporary
memory-mapped files for ``write_pyramidal_tiff_from_tiles``, whose level 0 is never held at all).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

TileFn = Callable[[int, int, int, int], np.ndarray]
#: tiles tifffile gathers before encoding them in parallel (its default, 512 MB, held that much of level 0)
_BUFFER_BYTES = 32 << 20


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 box average of an (H, W, 3) uint8 image (floor of odd sizes), rounded to nearest.

    Four strided uint16 adds: the only temporary is one uint16 copy of the output (a sum over
    reshaped axes would promote to 8-byte integers, 8x the output).
    """
    h, w = a.shape[0] // 2, a.shape[1] // 2
    q = a[0 : 2 * h : 2, 0 : 2 * w : 2].astype(np.uint16)
    q += a[1 : 2 * h : 2, 0 : 2 * w : 2]
    q += a[0 : 2 * h : 2, 1 : 2 * w : 2]
    q += a[1 : 2 * h : 2, 1 : 2 * w : 2]
    q += 2
    q >>= 2
    return q.astype(np.uint8)


def _level_shapes(h: int, w: int, tile_size: int, n_levels: int | None) -> list[tuple[int, int]]:
    """(H, W) per level: halve until the level fits in one tile (or ``n_levels`` levels)."""
    shapes = [(h, w)]
    while True:
        if n_levels is not None and len(shapes) >= n_levels:
            break
        ph, pw = shapes[-1]
        if n_levels is None and max(ph, pw) <= tile_size:
            break
        if ph < 2 or pw < 2:
            break
        shapes.append((ph // 2, pw // 2))
    return shapes


def _check(tile_size: int, compression: str | None) -> None:
    if tile_size % 16 or tile_size <= 0:
        raise ValueError(f"tile_size must be a positive multiple of 16 (TIFF rule), got {tile_size}")
    if compression not in (None, "none", "jpeg", "deflate", "zlib", "lzw", "zstd", "webp", "jpeg2000"):
        raise ValueError(f"unsupported compression {compression!r}")


def _write_kwargs(
    level: int,
    shape0: tuple[int, int],
    shape: tuple[int, int],
    mpp: float | None,
    tile_size: int,
    compression: str | None,
    quality: int,
) -> dict:
    kw: dict = {
        "tile": (tile_size, tile_size),
        "photometric": "rgb",
        "metadata": None,
        "subfiletype": 1 if level else 0,
        "maxworkers": os.cpu_count() or 1,
    }
    if compression not in (None, "none"):
        kw["compression"] = compression
        if compression in ("jpeg", "webp", "jpeg2000"):
            kw["compressionargs"] = {"level": int(quality)}
    if mpp is not None:
        ds = (shape0[1] / shape[1] + shape0[0] / shape[0]) / 2
        res = 1e4 / (mpp * ds)
        kw["resolution"] = (res, res)
        kw["resolutionunit"] = "CENTIMETER"
    return kw


def _tiles(read: TileFn, shape: tuple[int, int], tile_size: int, below: np.ndarray | None) -> Iterator[np.ndarray]:
    """Tiles of one level in TIFF order from ``read(x, y, w, h)`` (edge tiles padded white), each also
    reduced 2x into its place in ``below`` (the next level), so no level is ever copied whole."""
    h0, w0 = shape
    for y in range(0, h0, tile_size):
        for x in range(0, w0, tile_size):
            w, h = min(tile_size, w0 - x), min(tile_size, h0 - y)
            tile = np.asarray(read(x, y, w, h), dtype=np.uint8)
            if tile.shape != (h, w, 3):
                raise ValueError(f"tile_fn({x}, {y}, {w}, {h}) returned shape {tile.shape}, want {(h, w, 3)}")
            if below is not None and h >= 2 and w >= 2:
                small = _downsample2(tile)
                below[y // 2 : y // 2 + small.shape[0], x // 2 : x // 2 + small.shape[1]] = small
            if (h, w) != (tile_size, tile_size):
                full = np.full((tile_size, tile_size, 3), 255, np.uint8)
                full[:h, :w] = tile
                tile = full
            yield tile


def _write_levels(
    path: str | Path,
    shapes: list[tuple[int, int]],
    read0: TileFn,
    new_level: Callable[[int, tuple[int, int]], np.ndarray],
    mpp: float | None,
    tile_size: int,
    compression: str | None,
    quality: int,
) -> None:
    """Write every level tile by tile: level 0 from ``read0``, level i from the (H, W, 3) array that
    ``new_level(i, shape)`` gave and the level above filled; at most two reduced levels exist at once."""
    import tifffile

    h0, w0 = shapes[0]
    bigtiff = h0 * w0 * 3 * 4 // 3 > 2**31
    read: TileFn = read0
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        for i, shape in enumerate(shapes):
            below = new_level(i + 1, shapes[i + 1]) if i + 1 < len(shapes) else None
            kw = _write_kwargs(i, shapes[0], shape, mpp, tile_size, compression, quality)
            tiles = _tiles(read, shape, tile_size, below)
            tw.write(tiles, shape=(*shape, 3), dtype=np.uint8, buffersize=_BUFFER_BYTES, **kw)
            logger.debug("wrote level %d (%d x %d) of %s", i, shape[1], shape[0], path)
            if below is not None:
                read = _array_reader(below)
            del below, tiles


def _array_reader(level: np.ndarray) -> TileFn:
    """``TileFn`` reading windows of an in-memory or memory-mapped level."""

    def read(x: int, y: int, w: int, h: int) -> np.ndarray:
        return level[y : y + h, x : x + w]

    return read


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None,
    tile_size: int = 256,
    n_levels: int | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
) -> list[tuple[int, int]]:
    """Write an in-memory (H, W, 3) uint8 image as a pyramidal tiled TIFF; return (H, W) per level.

    Streamed tile by tile: besides ``rgb`` it holds at most two reduced levels (1/4 + 1/16 of it).
    """
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    _check(tile_size, compression)
    shapes = _level_shapes(rgb.shape[0], rgb.shape[1], tile_size, n_levels)
    _write_levels(
        path,
        shapes,
        _array_reader(rgb),
        lambda _i, shape: np.empty((*shape, 3), np.uint8),
        mpp,
        tile_size,
        compression,
        quality,
    )
    return shapes


def write_pyramidal_tiff_from_tiles(
    path: str | Path,
    shape: tuple[int, int],
    tile_fn: TileFn,
    mpp: float | None,
    tile_size: int = 256,
    n_levels: int | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
    workdir: str | Path | None = None,
) -> list[tuple[int, int]]:
    """Stream a pyramidal TIFF of level-0 ``shape`` (H, W) from ``tile_fn(x, y, w, h) -> (h, w, 3)``.

    Level 0 is never held in memory; level 1 is accumulated (2x box) in a temporary memmap under
    ``workdir`` (default: the output folder), each coarser level from the previous one.
    """
    _check(tile_size, compression)
    shapes = _level_shapes(int(shape[0]), int(shape[1]), tile_size, n_levels)
    tmpdir = tempfile.mkdtemp(prefix="protoseg-pyramid-", dir=workdir or Path(path).parent)
    try:
        _write_levels(path, shapes, tile_fn, lambda i, s: _memmap(tmpdir, i, s), mpp, tile_size, compression, quality)
        logger.info("wrote %d levels (%d x %d) of %s", len(shapes), shapes[0][1], shapes[0][0], path)
    finally:
        for f in Path(tmpdir).glob("*"):
            f.unlink()
        os.rmdir(tmpdir)
    return shapes


def _memmap(tmpdir: str, level: int, shape: tuple[int, int]) -> np.ndarray:
    """A temporary (H, W, 3) uint8 memmap for one pyramid level (every pixel is written before it is read)."""
    return np.lib.format.open_memmap(
        os.path.join(tmpdir, f"level{level}.npy"), mode="w+", dtype=np.uint8, shape=(shape[0], shape[1], 3)
    )
