"""dask pyramid of a slide (chunk pixels, edge tiles, threads), reads at an mpp and the thumbnail."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from protoseg.slide import Backend, open_slide
from protoseg.slide.writer import _downsample2
from slide_fixtures import make_pyramid, real_slide


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    # 1000 x 600 with 128 tiles: last column 104 px wide, last row 88 px high at level 0
    return make_pyramid(tmp_path_factory.mktemp("pyr") / "p.tif", 600, 1000, mpp=0.5, tile_size=128)


@pytest.mark.parametrize("kind", [Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE])
def test_dask_chunks_equal_read_region_every_level(pyramid, kind) -> None:
    with open_slide(pyramid[0], backend=kind) as s:
        pyr = s.dask_pyramid(chunk=128)
        assert len(pyr) == s.level_count == 4
        for lvl, arr in enumerate(pyr):
            w, h = s.level_dimensions[lvl]
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
            assert arr.chunksize[:2] == (min(128, h), min(128, w))
            nr, nc = arr.numblocks[:2]
            ds = s.level_downsamples[lvl]
            for r, c in {(0, 0), (nr - 1, nc - 1), (nr - 1, 0), (0, nc - 1), (nr // 2, nc // 2)}:
                block = arr.blocks[r, c].compute()
                bh, bw = block.shape[:2]
                assert (bh, bw) == (min(128, h - 128 * r), min(128, w - 128 * c))  # edge tiles clipped
                ref = s.read_region((round(128 * c * ds), round(128 * r * ds)), lvl, (bw, bh))
                np.testing.assert_array_equal(block, ref)
        # whole low level equals the direct read
        np.testing.assert_array_equal(pyr[3].compute(), s.read_level(3, (0, 0), s.level_dimensions[3]))


def test_real_slide_dask_edge_tiles() -> None:
    with open_slide(real_slide("tcga-cr-7395-01a-01-ts1.svs")) as s:
        for lvl in range(s.level_count):
            arr = s.dask_pyramid(chunk=256)[lvl]
            nr, nc = arr.numblocks[:2]
            last = arr.blocks[nr - 1, nc - 1].compute()
            tw, th = s.tile_size(lvl)
            ref = s.read_level(lvl, ((nc - 1) * tw, (nr - 1) * th), (last.shape[1], last.shape[0]))
            np.testing.assert_array_equal(last, ref)


def test_threaded_chunk_reads_match_serial(pyramid) -> None:
    for kind in (Backend.OPENSLIDE, Backend.TIFFSLIDE):
        with open_slide(pyramid[0], backend=kind) as s:
            arr = s.dask_pyramid()[0]
            idx = [(r, c) for r in range(arr.numblocks[0]) for c in range(arr.numblocks[1])] * 2
            serial = [arr.blocks[rc].compute(scheduler="synchronous") for rc in idx]
            with ThreadPoolExecutor(4) as pool:
                via_dask = list(pool.map(lambda rc, a=arr: a.blocks[rc].compute(scheduler="threads"), idx))
            for a, b in zip(serial, via_dask, strict=True):
                np.testing.assert_array_equal(a, b)


def test_read_at_mpp_uses_best_level_and_area_resize(tmp_path) -> None:
    path, rgb = make_pyramid(tmp_path / "raw.tif", 256, 384, mpp=0.5, tile_size=128, compression=None)
    lvl1 = _downsample2(rgb)
    with open_slide(path) as s:
        np.testing.assert_array_equal(s.read_level(1, (0, 0), (192, 128)), lvl1)  # lossless pyramid
        # 1.0 um/px = level 1 exactly
        np.testing.assert_array_equal(s.read((64, 32, 128, 64), mpp=1.0), lvl1[16:48, 32:96])
        # 2.0 um/px: level 2 (ds 4) is read directly
        assert s.best_level_for_downsample(4.0) == 2
        # 1.5 um/px (ds 3): level 1 read, then area-resized by 1.5
        out = s.read((0, 0, 384, 256), mpp=1.5)
        assert out.shape == (85, 128, 3)  # 384 / 3, round(256 / 3)
        ref = lvl1.astype(float).reshape(128, 192, 3)
        # area average of the level-1 pixels under output pixel (10, 20): rows 15..16.5, cols 30..31.5
        wy = np.array([1.0, 0.5])[:, None, None]
        wx = np.array([1.0, 0.5])[None, :, None]
        expect = (ref[15:17, 30:32] * wy * wx).sum((0, 1)) / 2.25
        assert np.abs(out[10, 20].astype(float) - expect).max() <= 1.0
        # level-0 read and level read without mpp
        np.testing.assert_array_equal(s.read((5, 6, 7, 8)), rgb[6:14, 5:12])
        np.testing.assert_array_equal(s.read((64, 32, 128, 64), level=1), lvl1[16:48, 32:96])


def test_thumbnail(pyramid) -> None:
    with open_slide(pyramid[0]) as s:
        th = s.thumbnail(100)
        assert th.shape == (60, 100, 3)
        ref = s.read_level(3, (0, 0), (125, 75)).astype(float).mean((0, 1))
        assert np.abs(th.astype(float).mean((0, 1)) - ref).max() < 3
