"""Pyramid writers: levels, box downsampling, and the streaming writer equals the in-memory one."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from protoseg.slide import open_slide
from protoseg.slide.writer import _downsample2, write_pyramidal_tiff, write_pyramidal_tiff_from_tiles
from slide_fixtures import smooth_rgb


def test_downsample2_is_box_mean() -> None:
    a = np.arange(5 * 7 * 3, dtype=np.uint8).reshape(5, 7, 3)
    out = _downsample2(a)
    assert out.shape == (2, 3, 3)  # odd sizes floor
    ref = np.array(
        [[a[2 * i : 2 * i + 2, 2 * j : 2 * j + 2].astype(float).mean((0, 1)) for j in range(3)] for i in range(2)]
    )
    assert np.abs(out - ref).max() <= 0.5


def test_streaming_writer_matches_in_memory(tmp_path) -> None:
    rgb = smooth_rgb(300, 520, seed=3)
    calls = []

    def tile_fn(x: int, y: int, w: int, h: int) -> np.ndarray:
        calls.append((x, y, w, h))
        return rgb[y : y + h, x : x + w]

    a = write_pyramidal_tiff(tmp_path / "a.tif", rgb, 0.5, tile_size=128, compression=None)
    b = write_pyramidal_tiff_from_tiles(tmp_path / "b.tif", (300, 520), tile_fn, 0.5, tile_size=128, compression=None)
    assert a == b == [(300, 520), (150, 260), (75, 130), (37, 65)]  # until it fits one tile
    assert calls[0] == (0, 0, 128, 128) and calls[-1] == (512, 256, 8, 44) and len(calls) == 3 * 5
    for key in range(4):
        np.testing.assert_array_equal(
            tifffile.imread(tmp_path / "a.tif", key=key), tifffile.imread(tmp_path / "b.tif", key=key)
        )
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "b.tif", key=1), _downsample2(rgb))
    assert not list(tmp_path.glob("protoseg-pyramid-*"))  # temporary memmaps removed
    with open_slide(tmp_path / "b.tif", backend="tiffslide") as s:
        assert s.level_count == 4 and s.mpp == pytest.approx(0.5)


def test_writer_options_and_errors(tmp_path) -> None:
    rgb = smooth_rgb(64, 96)
    assert write_pyramidal_tiff(tmp_path / "one.tif", rgb, None, tile_size=32, n_levels=1) == [(64, 96)]
    with tifffile.TiffFile(tmp_path / "one.tif") as tf:
        page = tf.pages[0]
        assert len(tf.pages) == 1 and page.is_tiled and page.compression == 7  # JPEG
    with pytest.raises(ValueError, match="multiple of 16"):
        write_pyramidal_tiff(tmp_path / "x.tif", rgb, 0.5, tile_size=100)
    with pytest.raises(ValueError, match="uint8"):
        write_pyramidal_tiff(tmp_path / "x.tif", rgb.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="returned shape"):
        write_pyramidal_tiff_from_tiles(tmp_path / "y.tif", (64, 64), lambda x, y, w, h: rgb, 0.5, tile_size=32)


def test_in_memory_writer_streams_without_copying_the_image(tmp_path) -> None:
    """Besides the image, the writer holds two reduced levels and a few tiles (the whole-image
    2x reduction it replaced peaked at 6x the image: uint16 and uint64 copies)."""
    import time
    import tracemalloc

    y, x = np.ogrid[:2048, :3072]
    rgb = np.empty((2048, 3072, 3), np.uint8)  # 18.9 MB of smooth gradients (JPEG keeps them)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = (x // 12) % 256, (y // 8) % 256, ((x + y) // 20) % 256
    start = time.perf_counter()
    tracemalloc.start()
    try:
        shapes = write_pyramidal_tiff(tmp_path / "big.tif", rgb, 0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 0.75 * rgb.nbytes, f"peak {peak / 1e6:.1f} MB for a {rgb.nbytes / 1e6:.1f} MB image"
    assert time.perf_counter() - start < 10
    assert len(shapes) == 5
    expected = rgb
    for _ in range(4):
        expected = _downsample2(expected)
    level4 = tifffile.imread(tmp_path / "big.tif", key=4)
    assert level4.shape == expected.shape and np.abs(level4.astype(int) - expected).mean() < 3  # JPEG
