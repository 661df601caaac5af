"""Pyramidal tiled TIFF writer (tifffile) that openslide ("generic-tiff") and tiffslide open with mpp.

Each level is a top-level tiled page (one ``write`` per level, halving each time) with
ResolutionUnit=CENTIMETER and resolution 1e4/mpp; SubIFD pyramids are seen as one level by openslide.
The streaming variant builds levels >= 1 in temporary memory-mapped files, so RAM stays bounded.
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


def _downsample2(a: np.ndarray) -> np.ndarray:
    """2x2 box average of an (H, W, 3) uint8 image (floor of odd sizes), rounded to nearest."""
    h, w = a.shape[0] // 2, a.shape[1] // 2
    blocks = a[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
    return ((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8)


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


def write_pyramidal_tiff(
    path: str | Path,
    rgb: np.ndarray,
    mpp: float | None,
    tile_size: int = 256,
    n_levels: int | None = None,
    compression: str | None = "jpeg",
    quality: int = 90,
) -> list[tuple[int, int]]:
    """Write an in-memory (H, W, 3) uint8 image as a pyramidal tiled TIFF; return (H, W) per level."""
    import tifffile

    rgb = np.ascontiguousarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 array, got {rgb.dtype} {rgb.shape}")
    _check(tile_size, compression)
    shapes = _level_shapes(rgb.shape[0], rgb.shape[1], tile_size, n_levels)
    bigtiff = rgb.nbytes * 4 // 3 > 2**31
    with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
        level = rgb
        for i, shape in enumerate(shapes):
            if i:
                level = _downsample2(level)
            tw.write(level, **_write_kwargs(i, shapes[0], shape, mpp, tile_size, compression, quality))
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
    import tifffile

    _check(tile_size, compression)
    h0, w0 = int(shape[0]), int(shape[1])
    shapes = _level_shapes(h0, w0, tile_size, n_levels)
    tmpdir = tempfile.mkdtemp(prefix="protoseg-pyramid-", dir=workdir or Path(path).parent)
    bigtiff = h0 * w0 * 3 * 4 // 3 > 2**31
    prev: np.ndarray | None = None
    try:
        nxt = _memmap(tmpdir, 1, shapes[1]) if len(shapes) > 1 else None

        def level0_tiles() -> Iterator[np.ndarray]:
            for y in range(0, h0, tile_size):
                for x in range(0, w0, tile_size):
                    w, h = min(tile_size, w0 - x), min(tile_size, h0 - y)
                    tile = np.asarray(tile_fn(x, y, w, h), dtype=np.uint8)
                    if tile.shape != (h, w, 3):
                        raise ValueError(f"tile_fn({x}, {y}, {w}, {h}) returned shape {tile.shape}, want {(h, w, 3)}")
                    if nxt is not None and h >= 2 and w >= 2:
                        small = _downsample2(tile)
                        nxt[y // 2 : y // 2 + small.shape[0], x // 2 : x // 2 + small.shape[1]] = small
                    if (h, w) != (tile_size, tile_size):
                        full = np.full((tile_size, tile_size, 3), 255, np.uint8)
                        full[:h, :w] = tile
                        tile = full
                    yield tile

        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            kw = _write_kwargs(0, shapes[0], shapes[0], mpp, tile_size, compression, quality)
            tw.write(level0_tiles(), shape=(h0, w0, 3), dtype=np.uint8, **kw)
            logger.info("wrote level 0 (%d x %d) of %s", w0, h0, path)
            for i in range(1, len(shapes)):
                prev, cur = nxt, None
                assert prev is not None
                prev.flush()
                if i + 1 < len(shapes):
                    cur = _memmap(tmpdir, i + 1, shapes[i + 1])
                    band = 2 * tile_size
                    for y in range(0, 2 * shapes[i + 1][0], band):
                        cur[y // 2 : (y + band) // 2] = _downsample2(prev[y : y + band, : 2 * shapes[i + 1][1]])
                tw.write(prev, **_write_kwargs(i, shapes[0], shapes[i], mpp, tile_size, compression, quality))
                del prev
                nxt = cur
    finally:
        nxt = None  # type: ignore[assignment]
        for f in Path(tmpdir).glob("*"):
            f.unlink()
        os.rmdir(tmpdir)
    return shapes


def _memmap(tmpdir: str, level: int, shape: tuple[int, int]) -> np.ndarray:
    """A white-initialised temporary (H, W, 3) uint8 memmap for one pyramid level."""
    mm = np.lib.format.open_memmap(
        os.path.join(tmpdir, f"level{level}.npy"), mode="w+", dtype=np.uint8, shape=(shape[0], shape[1], 3)
    )
    return mm
