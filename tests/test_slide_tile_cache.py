"""Decoded-tile cache of the direct TIFF reader: overlapping reads decode each native tile once, same pixels."""

from __future__ import annotations

import numpy as np
import pytest

from protoseg.slide.tiff_direct import TiffFileBackend
from protoseg.slide.tile_cache import DecodedTileCache
from slide_fixtures import make_pyramid


def _overlapping_boxes(width: int, height: int, size: int, stride: int) -> list[tuple[int, int]]:
    return [(x, y) for y in range(0, height - size + 1, stride) for x in range(0, width - size + 1, stride)]


def test_overlapping_reads_decode_each_native_tile_once_and_match_uncached(tmp_path) -> None:
    path, _ = make_pyramid(tmp_path / "s.tif", 512, 640, tile_size=128)
    cached, uncached = TiffFileBackend(path), TiffFileBackend(path)
    uncached.tile_cache = DecodedTileCache(max_bytes=0)  # nothing fits: every read decodes again
    try:
        boxes = _overlapping_boxes(640, 512, 100, 70)  # model-like tiles: overlapping, off the 128-px grid
        for x, y in boxes:
            np.testing.assert_array_equal(cached.read(0, x, y, 100, 100), uncached.read(0, x, y, 100, 100))
        native = (640 // 128) * (512 // 128)
        assert cached.tile_cache.misses == native  # every native tile decoded exactly once
        assert uncached.tile_cache.misses > 2 * native  # what overlapping reads cost without the cache
        assert cached.tile_cache.hits == uncached.tile_cache.misses - native
    finally:
        cached.close()
        uncached.close()


def test_cache_is_bounded_lru_and_its_tiles_are_read_only() -> None:
    cache = DecodedTileCache(max_bytes=3 * 1000)
    decoded: list[int] = []

    def decode(i: int) -> np.ndarray:
        decoded.append(i)
        return np.full(1000, i, np.uint8)

    for i in (1, 2, 3, 1, 4):  # 4 evicts the least recently used (2), not 1
        cache.get_or_decode(i, decode, i)
    assert cache.nbytes == 3000
    assert decoded == [1, 2, 3, 4]
    cache.get_or_decode(1, decode, 1)
    cache.get_or_decode(2, decode, 2)
    assert decoded == [1, 2, 3, 4, 2]
    tile = cache.get_or_decode(4, decode, 4)
    with pytest.raises(ValueError):
        tile[0] = 9  # shared by later reads: nobody may change it
    cache.clear()
    assert cache.nbytes == 0
