"""Byte-bounded LRU cache and the lazy prediction pyramid (on-demand chunks, consistency, threads)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from protoseg.infer.cache import ByteLRU
from protoseg.infer.lazy import LazyPrediction
from protoseg.infer.memory import ArraySlide
from protoseg.infer.predictor import Predictor
from protoseg.infer.pyramid import quantize
from test_infer_fakes import CLASSES, Counting, SmoothModel, smooth_image

torch.set_num_threads(1)


def test_lru_evicts_by_bytes_oldest_first():
    cache = ByteLRU(max_bytes=300)
    for k in "abc":
        cache.get(k, lambda: np.zeros(100, np.uint8))
    assert cache.bytes == 300 and len(cache) == 3
    cache.get("a", lambda: pytest.fail("a is cached"))  # touch a: b becomes the oldest
    cache.get("d", lambda: np.zeros(150, np.uint8))
    assert "b" not in cache and "c" not in cache and "a" in cache and "d" in cache
    assert cache.bytes == 250
    big = cache.get("huge", lambda: np.zeros(1000, np.uint8))  # larger than the cache: returned, not kept
    assert big.size == 1000 and "huge" not in cache and cache.bytes == 250


def test_lru_concurrent_requests_compute_once():
    cache = ByteLRU(10_000)
    calls = []
    gate = threading.Event()

    def compute():
        calls.append(1)
        gate.wait(2)
        return np.arange(10)

    with ThreadPoolExecutor(8) as pool:
        futs = [pool.submit(cache.get, "k", compute) for _ in range(8)]
        time.sleep(0.1)
        gate.set()
        results = [f.result() for f in futs]
    assert len(calls) == 1
    assert all(r is results[0] for r in results)


def test_lru_get_many_and_errors_do_not_poison():
    cache = ByteLRU(10_000)
    seen = []

    def compute(keys):
        seen.append(list(keys))
        return [np.full(2, k) for k in keys]

    cache.get_many([1, 2], compute)
    out = cache.get_many([2, 3, 1], compute)
    assert seen == [[1, 2], [3]] and [int(v[0]) for v in out] == [2, 3, 1]
    with pytest.raises(ValueError):
        cache.get("bad", lambda: (_ for _ in ()).throw(ValueError("boom")))
    assert cache.get("bad", lambda: np.zeros(1)).shape == (1,)


def _lazy(h=150, w=170, chunk=64, **kw):
    slide = ArraySlide(smooth_image(h, w, seed=7), mpp=0.5)
    model = Counting(SmoothModel())
    p = Predictor(model, classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)
    return LazyPrediction(p, slide, chunk=chunk, **kw), p, model, slide


def test_lazy_level0_equals_whole_region_prediction():
    lazy, p, _, slide = _lazy()
    assert lazy.levels == [(170, 150), (85, 75), (43, 38)]
    whole = p.predict_region(slide, (0, 0, 170, 150)).probs
    assert np.array_equal(np.asarray(lazy.probs(0)), quantize(whole))
    assert np.array_equal(np.asarray(lazy.mask(0)), whole.argmax(0).astype(np.uint8))


def test_lazy_reads_compute_only_needed_chunks_and_cache():
    lazy, _p, model, _ = _lazy()
    grid = lazy.layout.geom.grid
    part = lazy.mask(0)[70:100, 10:40].compute()  # inside chunk (1, 0)
    assert part.shape == (30, 30)
    assert model.tiles == len(grid.tiles_for_box((0, 64, 64, 64)))
    assert lazy.chunks_computed == 1
    lazy.probs(0)[2, 64:128, 0:64].compute()  # same chunk, other array: no model call
    assert model.tiles == len(grid.tiles_for_box((0, 64, 64, 64))) and lazy.chunks_computed == 1
    before = model.tiles
    lazy.mask(0)[64:128, 64:128].compute()  # neighbour shares a column of tiles through the tile cache
    shared = set(grid.tiles_for_box((0, 64, 64, 64))) & set(grid.tiles_for_box((64, 64, 64, 64)))
    assert model.tiles - before == len(grid.tiles_for_box((64, 64, 64, 64))) - len(shared)


def test_cached_chunk_peeks_without_computing():
    lazy, _, model, _ = _lazy()
    assert lazy.cached_chunk(0, 1, 0) is None and model.tiles == 0 and lazy.chunks_computed == 0
    data = lazy.chunk(0, 1, 0)
    tiles = model.tiles
    assert lazy.cached_chunk(0, 1, 0) is data  # the cached object, no model call
    assert lazy.cached_chunk(1, 0, 0) is None  # coarse level not computed by peeking either
    assert model.tiles == tiles and lazy.chunks_computed == 1
    lazy.cache.clear()  # evicted: None again, still nothing computed
    assert lazy.cached_chunk(0, 1, 0) is None and lazy.chunks_computed == 1


def test_lru_peek_touches_but_never_computes():
    cache = ByteLRU(max_bytes=200)
    assert cache.peek("a") is None and len(cache) == 0
    a = cache.get("a", lambda: np.zeros(100, np.uint8))
    cache.get("b", lambda: np.zeros(100, np.uint8))
    assert cache.peek("a") is a  # a becomes the newest: b is evicted next
    cache.get("c", lambda: np.zeros(100, np.uint8))
    assert "a" in cache and "b" not in cache


def test_lazy_concurrent_reads_of_one_chunk_compute_once():
    lazy, _, model, _ = _lazy()
    with ThreadPoolExecutor(6) as pool:
        outs = list(pool.map(lambda _: lazy.chunk(0, 1, 1).mask, range(6)))
    assert lazy.chunks_computed == 1
    assert all(np.array_equal(o, outs[0]) for o in outs)
    assert model.tiles == len(lazy.layout.tiles_for_chunk(1, 1))


def test_coarse_level_is_rounded_mean_of_finer():
    lazy, *_ = _lazy(h=130, w=131)
    fine = np.asarray(lazy.probs(0)).astype(np.float64)
    coarse = np.asarray(lazy.probs(1))
    assert coarse.shape == (4, 65, 66)
    ref = np.zeros(coarse.shape)
    for y in range(65):
        for x in range(66):
            block = fine[:, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2]
            ref[:, y, x] = np.floor(block.reshape(4, -1).mean(axis=1) + 0.5)
    assert np.array_equal(coarse, ref.astype(np.uint8))
    assert np.array_equal(np.asarray(lazy.mask(1)), coarse.argmax(0))


def test_lazy_tissue_only_gives_background_without_model_calls():
    class LeftHalfTissue:
        def fraction(self, x, y, w, h):
            return 1.0 if x < 64 else 0.0

    lazy, _, model, _ = _lazy(tissue_only=True, tissue=LeftHalfTissue())
    right = lazy.mask(0)[:, 64:].compute()
    assert model.tiles == 0 and np.all(right == 3)
    assert np.all(lazy.probs(0)[3, :, 64:].compute() == 255)


def test_level_array_indexing():
    lazy, *_ = _lazy()
    arr = lazy.level_array(0, "probs")
    full = np.asarray(lazy.probs(0))
    assert arr.shape == full.shape
    assert np.array_equal(arr[1, 5:70:3, 60:130], full[1, 5:70:3, 60:130])
    assert np.array_equal(arr[..., 7], full[..., 7])
    assert np.array_equal(lazy.level_array(1, "mask")[10], np.asarray(lazy.mask(1))[10])


def test_chunk_part_runs_only_its_tiles_and_the_rest_of_the_chunk_reuses_them():
    lazy, _, model, _ = _lazy()
    grid = lazy.layout.geom.grid
    part = lazy.chunk_part(1, 1, 70, 80, 100, 140)  # x 70..100, y 80..128 (clipped to chunk (1, 1))
    assert part.mask.shape == (48, 30) and part.probs.shape == (4, 48, 30)
    assert model.tiles == len(grid.tiles_for_box((70, 80, 30, 48))) < len(lazy.layout.tiles_for_chunk(1, 1))
    assert lazy.chunks_computed == 1 and lazy.cached_chunk(0, 1, 1) is None  # a part is not the chunk
    full = lazy.chunk(0, 1, 1)  # only the tiles the part did not need run now
    assert model.tiles == len(lazy.layout.tiles_for_chunk(1, 1))
    np.testing.assert_array_equal(part.probs, full.probs[:, 16:64, 6:36])
    np.testing.assert_array_equal(part.mask, full.mask[16:64, 6:36])
    fresh, *_ = _lazy()
    np.testing.assert_array_equal(fresh.chunk(0, 1, 1).probs, full.probs)  # same bytes as computed at once
    with pytest.raises(IndexError):
        lazy.chunk_part(1, 1, 0, 0, 64, 64)  # outside the chunk


def test_chunk_part_without_tissue_is_background_without_model_calls():
    class NoTissue:
        def fraction(self, x, y, w, h):
            return 0.0

    lazy, _, model, _ = _lazy(tissue_only=True, tissue=NoTissue())
    part = lazy.chunk_part(0, 0, 5, 6, 20, 30)
    assert model.tiles == 0 and part.mask.shape == (24, 15) and np.all(part.mask == 3)
    assert np.all(part.probs[3] == 255) and not part.probs[:3].any()
