"""SlideLevelArray / dask pyramid: numpy indexing semantics, one backend read per slice, every chunk
of every level equal to read_region, threads, caching, pickling, closed slides."""

from __future__ import annotations

import pickle
import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import numpy as np
import pytest

from protoseg.slide import Backend, SlideError, open_slide
from protoseg.slide.array import SlideLevelArray
from slide_fixtures import make_pyramid


@pytest.fixture(scope="module")
def lossless(tmp_path_factory):
    # 300 x 500 with 128 tiles, uncompressed: level 0 equals the source pixels exactly
    return make_pyramid(tmp_path_factory.mktemp("arr") / "raw.tif", 300, 500, tile_size=128, compression=None)


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    # 1000 x 600 JPEG: edge tiles 104 px wide / 88 px high at level 0, 4 levels
    return make_pyramid(tmp_path_factory.mktemp("arrj") / "p.tif", 600, 1000, tile_size=128)


KEYS = [
    (slice(0, 128), slice(128, 256)),  # one native tile
    (slice(250, 400), slice(450, 900)),  # clipped at the bottom-right edge (numpy clamps)
    (slice(None), slice(None), slice(None)),
    (5, slice(10, 20)),  # int drops the y axis
    (-1, -1),  # negative ints wrap
    (slice(3, 40, 7), slice(100, 2, -9)),  # steps, negative step
    (slice(None, None, -50),),
    (Ellipsis, 1),  # one channel
    (slice(7, 9), Ellipsis),
    (slice(20, 10), slice(0, 5)),  # empty
    (slice(0, 4), slice(0, 4), slice(2, None)),
]


@pytest.mark.parametrize("kind", [Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE])
def test_indexing_matches_numpy_on_source_pixels(lossless, kind) -> None:
    path, rgb = lossless
    with open_slide(path, backend=kind) as s:
        view = s.level_pixels(0)
        assert view.shape == (300, 500, 3) and view.dtype == np.uint8 and view.ndim == 3 and len(view) == 300
        assert view.chunks == (128, 128, 3) and view.nbytes == 300 * 500 * 3
        for key in KEYS:
            got, ref = view[key], rgb[key]
            assert got.shape == ref.shape, key
            np.testing.assert_array_equal(got, ref, err_msg=str(key))
        np.testing.assert_array_equal(np.asarray(view), rgb)
        with pytest.raises(IndexError):
            view[300, 0]
        with pytest.raises(IndexError):
            view[0, 0, 3]
        with pytest.raises(IndexError):
            view[[1, 2], 0]  # fancy indexing is not supported
        with pytest.raises(IndexError):
            view[0, 0, 0, 0]


@pytest.mark.parametrize("kind", [Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE])
def test_each_slice_is_one_backend_read(lossless, kind) -> None:
    path, _rgb = lossless
    with open_slide(path, backend=kind) as s:
        calls: list[tuple[int, int, int, int, int]] = []
        view = s.level_pixels(1)  # 250 x 150, tiles 128 -> 2 x 2 chunks, edge chunks 122 / 22
        real = view._read

        def counting(level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
            calls.append((level, x, y, w, h))
            return real(level, x, y, w, h)

        view._read = counting
        view[0:128, 128:256]
        assert calls == [(1, 128, 0, 122, 128)]  # clipped to the level, exactly one read
        calls.clear()
        view[:, :]
        assert calls == [(1, 0, 0, 250, 150)]  # whole level: one big region read
        calls.clear()
        arr = s.dask_pyramid(chunk=128)[1]  # built on the same cached view
        assert arr.chunks == ((128, 22), (128, 122), (3,))
        arr.compute(scheduler="sync")
        assert sorted(calls) == sorted(
            [(1, x, y, w, h) for y, h in ((0, 128), (128, 22)) for x, w in ((0, 128), (128, 122))]
        )


@pytest.mark.parametrize("kind", [Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE])
def test_every_chunk_of_every_level_equals_read_region(jpeg, kind) -> None:
    with open_slide(jpeg[0], backend=kind) as s:
        pyr = s.dask_pyramid(chunk=128)  # native tiles (the default is viewer-sized, see test_slide_pyramid)
        assert len(pyr) == s.level_count  # coarsest level 125 px: no lazy levels needed
        for lvl, arr in enumerate(pyr):
            w, h = s.level_dimensions[lvl]
            ds = s.level_downsamples[lvl]
            tw, th = s.tile_size(lvl)
            assert arr.shape == (h, w, 3) and arr.dtype == np.uint8
            assert arr.chunks[:2] == (
                tuple(min(th, h - y) for y in range(0, h, th)),
                tuple(min(tw, w - x) for x in range(0, w, tw)),
            )
            blocks = dask.compute(
                *[arr.blocks[r, c] for r in range(arr.numblocks[0]) for c in range(arr.numblocks[1])],
                scheduler="threads",
            )
            it = iter(blocks)
            for r in range(arr.numblocks[0]):
                for c in range(arr.numblocks[1]):
                    bh, bw = min(th, h - r * th), min(tw, w - c * tw)
                    ref = s.read_region((round(c * tw * ds), round(r * th * ds)), lvl, (bw, bh))
                    np.testing.assert_array_equal(next(it), ref, err_msg=f"level {lvl} chunk {r},{c}")
            whole = arr.compute(scheduler="threads")
            np.testing.assert_array_equal(whole, s.read_level(lvl, (0, 0), (w, h)))


def test_threads_read_identical_pixels(jpeg) -> None:
    with open_slide(jpeg[0]) as s:
        arr, view = s.dask_pyramid()[0], s.level_pixels(0)
        boxes = [(y, x) for y in range(0, 600, 128) for x in range(0, 1000, 128)] * 3
        serial = {b: view[b[0] : b[0] + 128, b[1] : b[1] + 128] for b in boxes}
        start = threading.Barrier(4)

        def read(box: tuple[int, int]) -> np.ndarray:
            return arr[box[0] : box[0] + 128, box[1] : box[1] + 128].compute(scheduler="sync")

        def together(box: tuple[int, int]) -> np.ndarray:
            start.wait(timeout=30)
            return read(box)

        with ThreadPoolExecutor(4) as pool:
            first = [pool.submit(together, boxes[0]) for _ in range(4)]  # 4 threads hit one chunk at once
            results = list(pool.map(read, boxes))
        for f in first:
            np.testing.assert_array_equal(f.result(), serial[boxes[0]])
        for b, got in zip(boxes, results, strict=True):
            np.testing.assert_array_equal(got, serial[b])


def test_pyramid_cached_per_slide_unique_across_slides_and_closed(jpeg) -> None:
    s1, s2 = open_slide(jpeg[0]), open_slide(jpeg[0])
    p1, p1b, p2 = s1.dask_pyramid(), s1.dask_pyramid(), s2.dask_pyramid()
    assert [a.name for a in p1] == [a.name for a in p1b]  # repeated calls share keys (napari cache)
    assert not {a.name for a in p1} & {a.name for a in p2}  # two slides never share keys
    assert s1.level_pixels(2) is s1.level_pixels(2)
    s2.close()
    s1.close()
    with pytest.raises(SlideError, match="closed"):
        p1[0][:10, :10].compute(scheduler="sync")
    with pytest.raises(SlideError, match="closed"):
        s1.dask_pyramid()


def test_pickle_reopens_the_slide(jpeg) -> None:
    with open_slide(jpeg[0], backend=Backend.TIFFSLIDE) as s:
        view = s.level_pixels(1)
        copy = pickle.loads(pickle.dumps(view))
        assert isinstance(copy, SlideLevelArray) and copy.level == 1 and copy._slide is not s
        assert copy._slide.backend is Backend.TIFFSLIDE
        np.testing.assert_array_equal(copy[10:90, 200:300], view[10:90, 200:300])
        copy._slide.close()
