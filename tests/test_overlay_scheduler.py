"""The overlay scheduler computes only the level-0 chunks on screen: coarse levels show what is computed
(downsampled from finer results, exactly the lazy pyramid once complete) and never trigger the model;
work that left the view is dropped."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from protoseg.classes import BCSS_WSSS
from protoseg.infer import LazyPrediction, Predictor
from protoseg.infer.pyramid import downsample2
from protoseg.napari.overlays import MASK_OFFSET, OverlayLevel, cam_display
from protoseg.napari.scheduler import ChunkScheduler, PartialChunk, downsample_covered

CHUNK = 32


class _ColourModel(nn.Module):
    """Scores from pixel colour (deterministic, fast): a 1x1 conv + softmax over 4 classes + background."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 5, 1)
        torch.manual_seed(0)
        nn.init.normal_(self.conv.weight, std=3.0)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x), dim=1)


class _Slide:
    """In-memory 400x300 RGB slide (SlideLike)."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        self.image = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
        self.level_dimensions = ((400, 300),)
        self.level_downsamples = (1.0,)
        self.level_count = 1
        self.mpp = 1.0

    def read_region(self, location, level, size):
        from PIL import Image

        x, y = location
        w, h = size
        out = np.full((h, w, 3), 255, np.uint8)
        part = self.image[max(0, y) : y + h, max(0, x) : x + w]
        out[max(0, -y) : max(0, -y) + part.shape[0], max(0, -x) : max(0, -x) + part.shape[1]] = part
        return Image.fromarray(out)


def _lazy() -> LazyPrediction:
    predictor = Predictor(_ColourModel(), classes=BCSS_WSSS, mpp=1.0, device="cpu", tile_size=32, batch_size=16)
    return LazyPrediction(predictor, _Slide(), slide_mpp=1.0, chunk=CHUNK)


def _scheduler() -> tuple[ChunkScheduler, LazyPrediction]:
    lazy = _lazy()
    return ChunkScheduler(lazy), lazy


def test_downsample_covered_equals_downsample2_when_fully_covered() -> None:
    rng = np.random.default_rng(1)
    probs = rng.integers(0, 256, (3, 7, 9), dtype=np.uint8)
    out, cov = downsample_covered(probs, np.ones((7, 9), bool))
    np.testing.assert_array_equal(out, downsample2(probs))
    assert cov.all()
    half = np.zeros((7, 9), bool)
    half[:, :4] = True
    out, cov = downsample_covered(probs, half)
    assert cov[:, :2].all() and not cov[:, 2:].any()
    np.testing.assert_array_equal(out[:, :, :2], downsample2(probs[:, :, :4]))


def test_only_chunks_in_view_are_computed_and_coarse_levels_never_compute() -> None:
    sched, lazy = _scheduler()
    assert lazy.layout.chunk_grid(0).shape == (10, 13) and len(lazy.levels) == 5
    coarse = OverlayLevel(sched, 2, None, MASK_OFFSET)
    assert not coarse[...].any()  # the thumbnail / zoomed-out view: nothing computed, nothing queued
    assert sched.pending() == [] and lazy.chunks_computed == 0

    sched.set_view(0, 40, 100, 50, 70)  # a corner at the model's resolution: chunk rows 1..3, cols 1..2
    assert sched.wait_idle(60)
    assert sched.computed == 6 and lazy.chunks_computed == 6
    # each chunk is only partly on screen: only the tiles under the view ran, none of the chunks is complete
    assert lazy.predictor.tiles_predicted == len(lazy.layout.geom.grid.tiles_for_box((50, 40, 20, 60)))
    assert not any(("chunk", 0, r, c) in lazy.cache for r in (1, 2, 3) for c in (1, 2))
    level0 = OverlayLevel(sched, 0, None, MASK_OFFSET)
    window = level0[40:100, 50:70]
    assert (window > 0).all() and sched.computed == 6  # what the view reads is there; no more work
    assert sched.pending() == []  # reading the partial chunks queued nothing: their view part is computed
    assert not level0[32:40, 32:96].any() and not level0[32:128, 70:96].any()  # off screen: transparent (0)

    # the coarse level now shows the computed part (downsampled), transparent elsewhere, still computing nothing
    shown = coarse[...]
    assert shown[10:25, 12:18].all() and not shown[:10].any() and not shown[:, :12].any() and not shown[:, 18:].any()
    assert sched.computed == 6
    cam = OverlayLevel(sched, 1, 2)[...]
    assert cam[20:50, 25:35].any() and not cam[:, 40:].any()


def test_partial_chunks_complete_when_panned_over_reusing_their_tiles() -> None:
    sched, lazy = _scheduler()
    grid = lazy.layout.geom.grid
    views = [(40, 100, 50, 70), (30, 90, 40, 60), (32, 128, 32, 96)]  # pan, then all of chunks rows 1..3, cols 1..2
    tiles: set = set()
    for i, (y0, y1, x0, x1) in enumerate(views):
        sched.set_view(0, y0, y1, x0, x1)
        assert sched.wait_idle(60)
        tiles |= set(grid.tiles_for_box((x0, y0, x1 - x0, y1 - y0)))
        assert lazy.predictor.tiles_predicted == len(tiles)  # every tile ran once: parts reuse the cached ones
        if i == 1:
            part = sched.get(0, 1, 1)  # chunk px 32..64: the union of both views' parts is known
            expected = np.zeros((CHUNK, CHUNK), bool)
            expected[8:, 18:] = True  # the first view
            expected[:, 8:28] = True  # the second
            np.testing.assert_array_equal(part.covered, expected)
            assert sched.pending() == []
    fresh = _lazy()  # its own predictor and caches
    for r in (1, 2, 3):
        for c in (1, 2):
            done = sched.get(0, r, c)
            assert not isinstance(done, PartialChunk) and lazy.cached_chunk(0, r, c) is done  # complete: the lazy chunk
            once = fresh.chunk(0, r, c)  # the same chunk computed at once: the same bytes
            np.testing.assert_array_equal(done.probs, once.probs)
            np.testing.assert_array_equal(done.mask, once.mask)
    assert sched.pending() == []
    strip = sched.get(0, 0, 1)  # the second view showed rows 30..32 of chunk (0, 1): still partial, not queued
    assert strip.covered[30:, 8:28].all() and strip.covered.sum() == 2 * 20 and sched.pending() == []


def test_partial_results_equal_the_full_chunk_and_stay_within_their_budget() -> None:
    sched, lazy = _scheduler()
    sched.max_partial_bytes = 1  # keeps only the newest partial chunk
    sched.set_view(0, 40, 100, 50, 70)
    assert sched.wait_idle(60) and sched.computed == 6
    shown = {(r, c): sched.get(0, r, c) for r in (1, 2, 3) for c in (1, 2)}  # evicted ones are queued again
    kept = [key for key, got in shown.items() if got is not None]
    assert len(kept) == 1 and isinstance(shown[kept[0]], PartialChunk)
    r, c = kept[0]
    part = shown[kept[0]]
    full = _lazy().chunk(0, r, c)
    assert part.covered.any()
    np.testing.assert_array_equal(part.probs[:, part.covered], full.probs[:, part.covered])
    np.testing.assert_array_equal(part.mask[part.covered], full.mask[part.covered])
    assert sched.wait_idle(60)  # the evicted ones were queued again by get(): recomputed from the cached tiles
    assert lazy.predictor.tiles_predicted == len(lazy.layout.geom.grid.tiles_for_box((50, 40, 20, 60)))


def test_coarse_chunk_equals_lazy_pyramid_once_its_fine_chunks_are_computed() -> None:
    sched, lazy = _scheduler()
    sched.set_view(0, 0, 64, 0, 64)  # the four level-0 chunks under level-1 chunk (0, 0)
    assert sched.wait_idle(60) and sched.computed == 4
    part = sched.get(1, 0, 0)
    assert part.covered.all()
    full = lazy.chunk(1, 0, 0)
    np.testing.assert_array_equal(part.probs, full.probs)
    np.testing.assert_array_equal(part.mask, full.mask)
    np.testing.assert_array_equal(cam_display(part.probs, 1), OverlayLevel(sched, 1, 1)[0:32, 0:32])


def test_work_that_left_the_view_is_dropped() -> None:
    sched, lazy = _scheduler()
    gate = threading.Event()
    original = lazy.chunk

    def slow_chunk(*key):
        gate.wait(10)
        return original(*key)

    lazy.chunk = slow_chunk  # the first chunk blocks until the view has moved
    sched.set_view(0, 0, 300, 0, 400)  # the whole slide at full resolution: 130 chunks queued
    assert len(sched.pending()) >= 120
    dropped = sched.set_view(2, 0, 75, 0, 100)  # zoomed out: level 2 on screen -> nothing to compute
    assert dropped >= 120 and sched.pending() == []
    gate.set()
    assert sched.wait_idle(60)
    assert sched.computed <= 1  # at most the chunk that was running when the view moved
    sched.close()


def test_downsample2_is_the_rounded_2x2_mean_on_both_paths() -> None:
    """Even shapes take the strided uint16 path, odd ones the padded path: both give the 2x2 mean rounded half
    up (edge pixels averaged over the pixels that exist)."""
    rng = np.random.default_rng(3)
    for shape in ((4, 64, 48), (4, 7, 9)):
        probs = rng.integers(0, 256, shape, dtype=np.uint8)
        c, h, w = shape
        expected = np.empty((c, -(-h // 2), -(-w // 2)), np.uint8)
        for y in range(expected.shape[1]):
            for x in range(expected.shape[2]):
                block = probs[:, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].astype(np.float64)
                expected[:, y, x] = np.floor(block.mean(axis=(1, 2)) + 0.5)
        np.testing.assert_array_equal(downsample2(probs), expected)


def test_channel_argmax_is_numpys_first_maximum() -> None:
    """The plane-wise class index equals ``np.argmax(axis=0)``, first class on ties (float and uint8 scores)."""
    from protoseg.infer.pyramid import channel_argmax

    rng = np.random.default_rng(5)
    scores = rng.random((5, 40, 30)).astype(np.float32)
    scores[:, :8, :8] = 0.25  # all tied: class 0
    scores[3, 20:, :] = scores[1, 20:, :]  # ties between classes 1 and 3: class 1 where they lead
    quantised = rng.integers(0, 3, (4, 33, 17), dtype=np.uint8)
    for probs in (scores, quantised):
        np.testing.assert_array_equal(channel_argmax(probs), np.argmax(probs, axis=0).astype(np.uint8))
