"""Decoded-tile cache of the direct TIFF reader: overlapping reads decode each native tile once, same pixels."""

from __future__ import annotations

import numpy as np

from protoseg.slide.lazy_pyramid import ChunkCache
from protoseg.slide.tiff_direct import DECODED_TILE_BYTES, TiffFileBackend
from slide_fixtures import make_pyramid


def test_overlapping_reads_decode_each_native_tile_once_and_match_uncached(tmp_path, monkeypatch) -> None:
    path, _ = make_pyramid(tmp_path / "s.tif", 512, 640, tile_size=128)
    decoded: list[tuple[int, int]] = []
    decode = TiffFileBackend._decode

    def counting(self, page, level, i):
        decoded.append((level, i))
        return decode(self, page, level, i)

    monkeypatch.setattr(TiffFileBackend, "_decode", counting)
    cached, uncached = TiffFileBackend(path), TiffFileBackend(path)
    assert cached.tile_cache.max_bytes == DECODED_TILE_BYTES == 32 << 20  # openslide's bound
    uncached.tile_cache = ChunkCache(0)  # nothing fits: every read decodes again
    try:
        boxes = [(x, y) for y in range(0, 512 - 100 + 1, 70) for x in range(0, 640 - 100 + 1, 70)]  # off-grid
        for x, y in boxes:
            np.testing.assert_array_equal(uncached.read(0, x, y, 100, 100), cached.read(0, x, y, 100, 100))
        without = len(decoded)
        decoded.clear()
        for x, y in boxes:
            cached.read(0, x, y, 100, 100)
        assert decoded == []  # every native tile was decoded once, by the first pass
        native = (640 // 128) * (512 // 128)
        assert without > 2 * native + native  # uncached decodes (> 2x the tiles) plus the cached pass's own
    finally:
        cached.close()
        uncached.close()
