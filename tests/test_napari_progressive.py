"""Progressive slide layers: placeholder-then-exact reads on the GUI thread, exact reads elsewhere, dropped
requests, bounded cache, closing; and opening slides in napari without decoding on the GUI thread."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from protoseg.napari.progressive import ProgressiveLoader
from protoseg.slide import open_slide
from slide_fixtures import make_pyramid, real_slide


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    # single-level lossless 1300 x 2600: lazy levels 650 x 1300 and 325 x 650 (factor 2 each, exact)
    path, _rgb = make_pyramid(
        tmp_path_factory.mktemp("flat") / "flat.tif", 1300, 2600, tile_size=256, compression=None, n_levels=1
    )
    return path


def _levels(slide, chunk: int = 256) -> list[tuple[Any, int]]:
    return [(a, c) for a, c, _ in slide.pyramid_arrays(chunk)]


class Gated:
    """A numpy level whose reads wait for ``gate`` (so tests control when workers finish); counts reads."""

    def __init__(self, data: np.ndarray, gate: threading.Event) -> None:
        self.data, self.gate, self.shape, self.reads = data, gate, data.shape, 0

    def __getitem__(self, key: Any) -> np.ndarray:
        assert self.gate.wait(30), "test gate never opened"
        self.reads += 1
        return self.data[key]


def _until(predicate, timeout: float = 10.0) -> bool:
    """Poll ``predicate`` until true (worker threads reach a state) or ``timeout``."""
    end = time.monotonic() + timeout
    while not predicate() and time.monotonic() < end:
        time.sleep(0.005)
    return bool(predicate())


def _gated_levels(gate: threading.Event, chunk: int = 64) -> list[tuple[Any, int]]:
    rng = np.random.default_rng(1)
    fine = rng.integers(0, 255, (512, 768, 3), dtype=np.uint8)
    return [(Gated(fine, gate), chunk), (Gated(fine[::4, ::4].copy(), gate), chunk)]


# ---- Qt-free unit tests ---------------------------------------------------------------------------------
def test_blocking_reads_are_exact_and_start_no_thread(flat: Path) -> None:
    with open_slide(flat) as slide:
        levels = _levels(slide)
        loader = ProgressiveLoader(levels)  # default policy: every read blocks (scripts, tests, workers)
        arrays = loader.arrays
        assert [a.shape for a in arrays] == [(1300, 2600, 3), (650, 1300, 3), (325, 650, 3)]
        assert arrays[0].chunks == (256, 256, 3) and arrays[0].dtype == np.uint8 and arrays[0].ndim == 3
        for arr, (base, _c) in zip(arrays, levels):
            for key in [(slice(10, 300), slice(200, 700)), (5, slice(None)), (..., 1), (slice(0, 99, 3), 7, 2)]:
                np.testing.assert_array_equal(arr[key], base[key])
            np.testing.assert_array_equal(np.asarray(arr), np.asarray(base))
        np.testing.assert_array_equal(arrays[0][100:400, 300:900], slide.read((300, 100, 600, 300)))
        assert loader.threads == 0 and loader.loaded == 0


def test_gui_reads_show_placeholders_then_exact_pixels(tmp_path: Path) -> None:
    # two stored levels (1300 x 2600, 650 x 1300) + one lazy level (325 x 650) reduced from level 1
    path, _ = make_pyramid(tmp_path / "two.tif", 1300, 2600, tile_size=256, compression=None, n_levels=2)
    with open_slide(path) as slide:
        levels = _levels(slide)
        ready: list[int] = []
        on_ready = lambda: ready.append(threading.get_ident())  # noqa: E731
        loader = ProgressiveLoader(levels, on_ready=on_ready, nonblocking=lambda: True)
        fine, mid, coarse = loader.arrays
        first = fine[300:700, 500:1300]
        assert (first == 255).all(), "nothing loaded yet: the placeholder is white"
        assert loader.wait_idle(60) and not loader.last_error
        assert ready and threading.get_ident() not in ready, "on_ready comes from the worker threads"
        np.testing.assert_array_equal(fine[300:700, 500:1300], levels[0][0][300:700, 500:1300])

        mid[512:650, 0:256]  # load level 1 there: it is the placeholder of level 0 below
        assert loader.wait_idle(60) and loader.is_loaded(1, 2, 0) and not loader.is_loaded(0, 4, 0)
        before = loader.loaded
        expected = np.repeat(np.repeat(np.asarray(levels[1][0])[512:650, 0:256], 2, 0), 2, 1)
        np.testing.assert_array_equal(fine[1024:1300, 0:512], expected)
        assert loader.wait_idle(60) and loader.loaded == before + len(loader.keys_in(0, 1024, 1300, 0, 512))
        np.testing.assert_array_equal(fine[1024:1300, 0:512], levels[0][0][1024:1300, 0:512])

        loader.prefetch()  # the coarsest level, reduced from the level 1 chunks the loader caches on the way
        assert loader.wait_idle(60)
        np.testing.assert_array_equal(np.asarray(coarse), np.asarray(levels[2][0]))  # equals the lazy pyramid
        assert all(loader.is_loaded(1, r, c) for r in range(3) for c in range(6))
        assert loader.close(timeout=10) and loader.threads == 0


def test_coarsest_level_placeholder_and_level_switch_drops_old_requests() -> None:
    gate = threading.Event()
    levels = _gated_levels(gate)
    loader = ProgressiveLoader(levels, nonblocking=lambda: True, workers=1)
    gate.set()
    loader.prefetch()
    assert loader.wait_idle(30)
    gate.clear()
    coarse = levels[1][0].data
    out = loader.arrays[0][0:128, 0:200]  # nothing of level 0 loaded: the coarsest level, repeated 4x
    np.testing.assert_array_equal(out, np.repeat(np.repeat(coarse, 4, 0), 4, 1)[0:128, 0:200])
    first = set(loader.keys_in(0, 0, 128, 0, 200))
    assert _until(lambda: len(loader.pending()) == len(first) - 1)  # the worker took one, waits at the gate
    loader.arrays[0][384:512, 512:768]  # the view moved: the old window's queued chunks are dropped
    second = set(loader.keys_in(0, 384, 512, 512, 768))
    assert set(loader.pending()) == second and loader.dropped == len(first) - 1
    assert loader.pending()[0] == (0, 7, 10)  # newest first, the window's centre before its edges
    gate.set()
    assert loader.wait_idle(30)
    loaded = {k for k in first | second if loader.is_loaded(*k)}
    assert second <= loaded and len(loaded & first) == 1  # only the chunk already in flight
    np.testing.assert_array_equal(loader.arrays[0][384:512, 512:768], levels[0][0].data[384:512, 512:768])
    loader.close(timeout=10)


def test_close_stops_the_workers_and_later_reads_are_exact() -> None:
    gate = threading.Event()
    levels = _gated_levels(gate)
    loader = ProgressiveLoader(levels, nonblocking=lambda: True, workers=2)
    loader.arrays[0][0:256, 0:256]
    assert _until(lambda: len(loader._inflight) == 2)  # both workers wait inside a read
    assert loader.threads == 2 and loader.pending()
    assert not loader.close(timeout=0.2)  # both workers still wait inside a read
    assert loader.closed and not loader.pending() and loader.token.cancelled
    gate.set()
    assert loader.close(timeout=10) and loader.threads == 0
    assert loader.loaded == 0 and loader.nbytes == 0  # what finished after close() is not kept
    np.testing.assert_array_equal(loader.arrays[0][10:50, 20:90], levels[0][0].data[10:50, 20:90])
    loader.arrays[0][300:400, 300:400]
    assert loader.threads == 0 and not loader.pending()  # a closed loader queues nothing


def test_cache_is_bounded_but_keeps_the_coarsest_level() -> None:
    gate = threading.Event()
    gate.set()
    levels = _gated_levels(gate)
    chunk_bytes = 64 * 64 * 3
    loader = ProgressiveLoader(levels, nonblocking=lambda: True, max_bytes=10 * chunk_bytes)
    loader.prefetch()
    for y in range(0, 512, 64):
        loader.arrays[0][y : y + 64, 0:320]  # 5 chunks a row: the cache ends holding the last two rows
        assert loader.wait_idle(30)
    coarse_bytes = levels[1][0].data.nbytes
    assert loader.nbytes <= 10 * chunk_bytes + coarse_bytes
    assert all(loader.is_loaded(1, r, c) for r in range(2) for c in range(3))
    assert all(loader.is_loaded(0, r, c) for r in (6, 7) for c in range(5)) and not loader.is_loaded(0, 0, 0)
    loader.close(timeout=10)


def test_a_failing_chunk_keeps_its_placeholder_and_reports() -> None:
    class Broken:
        shape = (128, 128, 3)

        def __getitem__(self, key: Any) -> np.ndarray:
            raise OSError("damaged tile")

    loader = ProgressiveLoader([(Broken(), 64)], nonblocking=lambda: True)
    assert (loader.arrays[0][0:100, 0:100] == 255).all()
    assert loader.wait_idle(30) and "damaged tile" in (loader.last_error or "")
    assert (loader.arrays[0][0:100, 0:100] == 255).all() and loader.wait_idle(5)  # not retried in a loop
    loader.close(timeout=10)


# ---- napari under Xvfb ---------------------------------------------------------------------------------------
def _open_and_measure(viewer, path: Path, name: str, monkeypatch) -> tuple[Any, float, list[str]]:
    """Open ``path`` with the protoseg reader while a heartbeat measures the GUI stall until the picture is
    complete; also record slide pixel reads made on the GUI thread during the open."""
    from protoseg.napari.refresh import wait_slide_layers
    from protoseg.slide.array import SlideLevelArray
    from widget_support import Heartbeat, record_stall

    gui_reads: list[str] = []
    real = SlideLevelArray.__getitem__

    def spy(self, key):
        if threading.current_thread() is threading.main_thread():
            gui_reads.append(repr(self))
        return real(self, key)

    monkeypatch.setattr(SlideLevelArray, "__getitem__", spy)
    beat = Heartbeat()
    beat.reset()
    layer = viewer.open(str(path), plugin="protoseg")[0]
    reads_during_open = list(gui_reads)
    assert wait_slide_layers(viewer, 60), "chunks never finished loading"  # processes events: beats go on
    stall = record_stall(name, beat)
    beat.stop()
    return layer, stall, reads_during_open


def _warm_napari(viewer) -> None:
    """napari's own first-layer costs (imports of layer controls) are not the reader's."""
    from widget_support import settle

    viewer.window.resize(1280, 860)
    viewer.layers.remove(viewer.add_image(np.zeros((8, 8, 3), np.uint8), rgb=True))
    settle(0.5)


def _screenshot_when_loaded(viewer) -> np.ndarray:
    from protoseg.napari.refresh import wait_slide_layers
    from widget_support import settle

    viewer.reset_view()
    settle(0.3)
    assert wait_slide_layers(viewer, 60)
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]


def test_synthetic_slide_opens_without_decoding_on_the_gui_thread(make_napari_viewer, flat, monkeypatch) -> None:
    viewer = make_napari_viewer(show=True)
    _warm_napari(viewer)
    layer, stall, gui_reads = _open_and_measure(viewer, flat, "Open slide (synthetic single-level)", monkeypatch)
    assert gui_reads == [], f"the GUI thread decoded slide pixels: {gui_reads}"
    assert stall < 2000
    loader = layer.data[0].loader
    assert loader.nonblocking() and loader.loaded >= 1
    assert loader.on_ready.__self__.refreshes >= 1, "the layer was never refreshed after chunks arrived"
    with open_slide(flat) as slide:  # on the GUI thread, the loaded coarsest level is the exact pyramid
        np.testing.assert_array_equal(np.asarray(layer.data[-1]), np.asarray(slide.pyramid_arrays()[-1][0]))
    img = _screenshot_when_loaded(viewer)
    assert img.std() > 20 and (img > 250).all(axis=-1).mean() < 0.5, "the canvas does not show the slide"
    viewer.layers.remove(layer)  # removing the layer stops its loader
    assert loader.closed and loader.close(timeout=10)


def test_tcga_slide_opens_progressively(make_napari_viewer, monkeypatch) -> None:
    path = real_slide("tcga-cr-7395-01a-01-ts1.svs")
    viewer = make_napari_viewer(show=True)
    _warm_napari(viewer)
    _layer, stall, gui_reads = _open_and_measure(viewer, path, "Open slide (TCGA)", monkeypatch)
    assert gui_reads == [], f"the GUI thread decoded slide pixels: {gui_reads}"
    assert stall < 2000
    img = _screenshot_when_loaded(viewer)
    rgb = img.astype(int)
    stained = ((rgb.max(-1) - rgb.min(-1) > 25) & (rgb.max(-1) > 60)).mean()
    assert img.std() > 10 and stained > 0.05, "no stained tissue visible"


def test_levels_survive_deepcopy_as_napari_duplicate_layer_does(tmp_path: Path) -> None:
    import copy

    path, _ = make_pyramid(tmp_path / "dup.tif", 300, 400, tile_size=128, compression=None, n_levels=1)
    with open_slide(path) as slide:
        loader = ProgressiveLoader(_levels(slide))
        copied = copy.deepcopy(loader.arrays)  # the loader holds locks: copying it would raise
        assert all(a is b for a, b in zip(copied, loader.arrays))
        np.testing.assert_array_equal(np.asarray(copied[0]), np.asarray(_levels(slide)[0][0]))
        loader.close()
