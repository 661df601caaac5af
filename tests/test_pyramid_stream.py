"""Coarse pyramid levels built while level 0 is written (issue 22): the same bytes as building them afterwards
from the stored levels, whatever the order, threads, resumed chunks or the bound on open parents."""

from __future__ import annotations

import random
import threading

import numpy as np
import pytest

from protoseg.infer.grid import ChunkGrid
from protoseg.infer.pyramid import ChunkData, background_chunk, chunk_from_finer, level_shapes
from protoseg.infer.pyramid_stream import StreamingPyramid

C = 3


class Store:
    """Per-level uint8 score and mask arrays with the batch writer's chunk write."""

    def __init__(self, width: int, height: int, chunk: int) -> None:
        self.grids = [ChunkGrid(w, h, chunk) for w, h in level_shapes(width, height, chunk)]
        self.probs = [np.zeros((C, g.height, g.width), np.uint8) for g in self.grids]
        self.masks = [np.zeros((g.height, g.width), np.uint8) for g in self.grids]
        self.writes: list[tuple[int, int, int]] = []
        self.lock = threading.Lock()

    def write(self, level: int, cy: int, cx: int, data: ChunkData) -> None:
        x, y, w, h = self.grids[level].box(cy, cx)
        assert data.probs.shape == (C, h, w) and data.mask.shape == (h, w)
        self.probs[level][:, y : y + h, x : x + w] = data.probs
        self.masks[level][y : y + h, x : x + w] = data.mask
        with self.lock:
            self.writes.append((level, cy, cx))

    def read(self, level: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.probs[level][:, y0:y1, x0:x1]


def _reference(level0: np.ndarray, width: int, height: int, chunk: int) -> Store:
    """Levels built afterwards, level by level, from the stored finer level (the batch writer before)."""
    ref = Store(width, height, chunk)
    ref.probs[0][:] = level0
    for level in range(1, len(ref.grids)):
        for cy, cx in ref.grids[level]:
            c = chunk
            finer = ref.read(level - 1, 2 * cy * c, 2 * (cy + 1) * c, 2 * cx * c, 2 * (cx + 1) * c)
            ref.write(level, cy, cx, chunk_from_finer(finer))
    return ref


def _level0(width: int, height: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (C, height, width), dtype=np.uint8)


def _feed(store: Store, pyramid: StreamingPyramid, level0: np.ndarray, chunks: list, threads: int = 1) -> None:
    def work(part: list) -> None:
        for cy, cx in part:
            x, y, w, h = store.grids[0].box(cy, cx)
            probs = level0[:, y : y + h, x : x + w].copy()
            store.write(0, cy, cx, ChunkData(probs, np.zeros((h, w), np.uint8)))
            pyramid.add(0, cy, cx, probs)

    workers = [threading.Thread(target=work, args=(chunks[i::threads],)) for i in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join()


def _assert_same(store: Store, ref: Store) -> None:
    for level in range(1, len(ref.grids)):
        assert np.array_equal(store.probs[level], ref.probs[level]), level
        assert np.array_equal(store.masks[level], ref.masks[level]), level


@pytest.mark.parametrize("width,height,chunk", [(200, 150, 16), (97, 131, 16), (64, 64, 32)])
def test_streamed_levels_equal_levels_built_afterwards_in_any_order_and_threads(width, height, chunk) -> None:
    level0 = _level0(width, height)
    ref = _reference(level0, width, height, chunk)
    store = Store(width, height, chunk)
    pyramid = StreamingPyramid(store.grids, C, store.write)
    chunks = list(store.grids[0])
    random.Random(1).shuffle(chunks)
    _feed(store, pyramid, level0, chunks, threads=3)
    assert pyramid.build_missing(store.read) == 0  # everything was built while level 0 arrived
    _assert_same(store, ref)
    coarse = [w for w in store.writes if w[0] > 0]
    assert len(coarse) == len(set(coarse)) == sum(len(g) for g in store.grids[1:])  # each coarse chunk once


def test_resumed_chunks_and_the_open_parent_bound_are_filled_in_from_the_stored_levels() -> None:
    width, height, chunk = 200, 150, 16
    level0 = _level0(width, height, seed=2)
    ref = _reference(level0, width, height, chunk)
    store = Store(width, height, chunk)
    chunks = list(store.grids[0])
    earlier, now = chunks[::3], [ch for i, ch in enumerate(chunks) if i % 3]
    for cy, cx in earlier:  # written by an earlier, interrupted run: never passed to this pyramid
        x, y, w, h = store.grids[0].box(cy, cx)
        store.probs[0][:, y : y + h, x : x + w] = level0[:, y : y + h, x : x + w]
    pyramid = StreamingPyramid(store.grids, C, store.write, max_open_bytes=2 * C * chunk * chunk)  # 2 parents
    random.Random(3).shuffle(now)
    _feed(store, pyramid, level0, now)
    assert pyramid.build_missing(store.read) > 0
    _assert_same(store, ref)


def test_an_odd_chunk_side_builds_everything_afterwards() -> None:
    width, height, chunk = 60, 45, 17
    level0 = _level0(width, height, seed=4)
    ref = _reference(level0, width, height, chunk)
    store = Store(width, height, chunk)
    pyramid = StreamingPyramid(store.grids, C, store.write)
    assert not pyramid.enabled
    _feed(store, pyramid, level0, list(store.grids[0]))
    assert pyramid.build_missing(store.read) == sum(len(g) for g in store.grids[1:])
    _assert_same(store, ref)


def test_background_chunks_known_up_front_need_no_data_and_no_read_back() -> None:
    """As the batch writer runs: background chunks (no tissue) are written first and never streamed; the
    pyramid fills them in as constants, so nothing is read back and the bytes are those built afterwards."""
    width, height, chunk = 200, 150, 16
    store = Store(width, height, chunk)
    chunks = list(store.grids[0])
    rng = random.Random(5)
    background = {ch for ch in chunks if ch[1] < 4 or rng.random() < 0.3}  # a glass margin and scattered glass
    level0 = _level0(width, height, seed=6)
    for cy, cx in background:
        x, y, w, h = store.grids[0].box(cy, cx)
        level0[:, y : y + h, x : x + w] = background_chunk(C, h, w).probs
        store.write(0, cy, cx, background_chunk(C, h, w))
    ref = _reference(level0, width, height, chunk)
    pyramid = StreamingPyramid(store.grids, C, store.write, background)
    tissue = [ch for ch in chunks if ch not in background]
    rng.shuffle(tissue)
    _feed(store, pyramid, level0, tissue, threads=2)
    reads: list[tuple[int, ...]] = []

    def read(*box: int) -> np.ndarray:
        reads.append(box)
        return store.read(*box)

    assert pyramid.build_missing(read) == 0 and not reads  # background-only parents are constants
    _assert_same(store, ref)
    _feed(store, pyramid, level0, tissue[:1])  # a chunk given again after its parent was built: ignored
    _assert_same(store, ref)


def test_a_chunk_given_twice_while_its_parent_waits_is_ignored_with_a_warning(caplog) -> None:
    width, height, chunk = 64, 64, 16
    level0 = _level0(width, height, seed=7)
    ref = _reference(level0, width, height, chunk)
    store = Store(width, height, chunk)
    pyramid = StreamingPyramid(store.grids, C, store.write)
    chunks = list(store.grids[0])
    _feed(store, pyramid, level0, [chunks[0], chunks[0], *chunks[1:]])  # (0, 0) twice: its parent would
    assert "given twice" in caplog.text  # otherwise be written with a quarter missing
    assert pyramid.build_missing(store.read) == 0
    _assert_same(store, ref)
