"""Batch prediction to OME-Zarr: equality with lazy, resume after a crash, tissue skipping, output errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.infer.batch import predict_slide_to_omezarr
from protoseg.infer.errors import InferenceError, OutputError
from protoseg.infer.lazy import LazyPrediction
from protoseg.infer.memory import ArraySlide
from protoseg.infer.omezarr import open_prediction
from protoseg.infer.plan import plan_steps, strip_order
from protoseg.infer.predictor import Predictor
from protoseg.slide import MissingMppError
from test_infer_fakes import CLASSES, Counting, SmoothModel, smooth_image

torch.set_num_threads(1)
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides"


def _setup(h=150, w=200, seed=11):
    slide = ArraySlide(smooth_image(h, w, seed=seed), mpp=0.5)
    model = Counting(SmoothModel())
    return slide, model, Predictor(model, classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)


def _read_all(path):
    pz = open_prediction(path)
    return [(pz.probs(k)[...], pz.mask(k)[...]) for k in range(pz.num_levels)]


def test_batch_equals_lazy_on_every_level(tmp_path):
    slide, model, p = _setup()
    res = predict_slide_to_omezarr(p, slide, tmp_path / "a.zarr", chunk=48, tissue_only=False, strip=2, readers=2)
    n_tiles = int(np.prod(p.geometry(slide).grid.shape))
    assert res.chunks_total == 4 * 5 and res.chunks_predicted == 20
    assert model.tiles >= n_tiles and res.tiles_predicted == model.tiles
    lazy = LazyPrediction(p, slide, chunk=48)
    for k, (probs, mask) in enumerate(_read_all(tmp_path / "a.zarr")):
        assert np.array_equal(probs, np.asarray(lazy.probs(k)))
        assert np.array_equal(mask, np.asarray(lazy.mask(k)))


@pytest.mark.parametrize("writers,finishers", [(3, 1), (0, 1), (0, 2)])
def test_writer_threads_or_the_model_thread_give_the_same_bytes(tmp_path, monkeypatch, writers, finishers):
    """Several writer threads write chunks in parallel; ``writers=0`` blends and writes them between batches,
    in the model's own thread or on a pool as wide as the model's threads. Either way: the bytes of one
    writer thread, each chunk counted once."""
    import threading

    from protoseg.infer import batch, tile_pipeline

    monkeypatch.setattr(tile_pipeline, "finish_threads", lambda: finishers)
    slide, _model, p = _setup()
    ref = tmp_path / "one.zarr"
    predict_slide_to_omezarr(p, slide, ref, chunk=48, tissue_only=False, strip=2, readers=2, writers=1)
    names: set[str] = set()
    original = batch._Arrays.write

    def spy(self, level, cy, cx, data):
        names.add(threading.current_thread().name)
        return original(self, level, cy, cx, data)

    monkeypatch.setattr(batch._Arrays, "write", spy)
    seen: list[int] = []
    out = tmp_path / f"{writers}.zarr"
    res = predict_slide_to_omezarr(
        p,
        slide,
        out,
        chunk=48,
        tissue_only=False,
        strip=2,
        readers=2,
        writers=writers,
        progress=lambda d, t: seen.append(d),
    )
    assert res.chunks_predicted == 20 and seen[-1] == 20 and sorted(seen) == seen  # counted once each, in order
    with pytest.raises(InferenceError, match="writers must be >= 0"):
        predict_slide_to_omezarr(p, slide, tmp_path / "never.zarr", writers=-1)
    assert not (tmp_path / "never.zarr").exists()
    if writers:
        assert len({n for n in names if n.startswith("protoseg-write-")}) >= 2  # chunks were written in parallel
    elif finishers == 1:
        assert names == {threading.current_thread().name}
    else:  # between batches on the pool (a lone ready chunk in the model's thread); never beside the model
        assert len({n for n in names if n.startswith("protoseg-finish")}) == 2
        assert names <= {threading.current_thread().name} | {n for n in names if n.startswith("protoseg-finish")}
    assert open_prediction(out).group["done"][...].all()
    for (pa, ma), (pb, mb) in zip(_read_all(out), _read_all(ref)):
        assert np.array_equal(pa, pb) and np.array_equal(ma, mb)


def test_plan_reuses_tiles_within_a_strip_and_bounds_memory():
    from protoseg.infer.grid import ChunkGrid, PredictionGrid

    grid = PredictionGrid(400, 300, 32, 8)
    chunks = ChunkGrid(400, 300, 50)
    tiles_for = lambda r, c: grid.tiles_for_box(chunks.box(r, c))  # noqa: E731
    rows, cols = chunks.shape
    steps = list(plan_steps(strip_order(rows, cols, 3), tiles_for, window=3))
    assert sorted(s.chunk for s in steps) == sorted(chunks)
    live, peak, computed = set(), 0, 0
    for s in steps:
        new = {j for j, _ in s.new_jobs}
        assert set(s.jobs) <= live | new  # every tile job needed is alive or started here
        live |= new
        computed += len(new)
        peak = max(peak, len(live))
        live -= set(s.release)
    assert not live
    all_tiles = int(np.prod(grid.shape))
    strips_of: dict = {}
    for r, c in chunks:
        for t in tiles_for(r, c):
            strips_of.setdefault(t, set()).add(c // 3)
    # a tile is predicted once per strip of chunks it touches (recomputed only across strip borders)
    assert computed == sum(len(v) for v in strips_of.values()) < 1.3 * all_tiles
    assert peak < 0.5 * all_tiles


def test_default_strip_is_the_widest_within_the_memory_budget():
    """A WSI-wide plan with 4-chunk strips predicted 9 % of a 20,000 px slide's tiles twice; the default strip is
    the widest whose kept tiles fit the budget (never narrower than 4), measured on the plan itself."""
    from protoseg.infer.grid import PredictionGrid
    from protoseg.infer.plan import STRIP_CHOICES, STRIP_MEMORY_BUDGET, default_strip, peak_kept_tiles

    wsi = PredictionGrid(20_000, 20_000, 224, 56)
    tile_bytes = 4 * 5 * 224 * 224  # float32 scores of 4 classes + background
    strip = default_strip(wsi, 512, tile_bytes)
    assert strip == 16 and peak_kept_tiles(wsi, 512, strip) * tile_bytes <= STRIP_MEMORY_BUDGET
    wider = STRIP_CHOICES[STRIP_CHOICES.index(strip) + 1]
    assert peak_kept_tiles(wsi, 512, wider) * tile_bytes > STRIP_MEMORY_BUDGET
    assert default_strip(PredictionGrid(20_000, 20_000, 512, 128), 512, 4 * 12 * 512 * 512) == 4  # big tiles
    assert default_strip(PredictionGrid(1500, 900, 224, 56), 512, tile_bytes) == 4  # 3 chunk columns: one strip


def test_default_strip_predicts_each_tile_once_on_a_slide_wider_than_four_chunks(tmp_path):
    slide, model, p = _setup()  # 5 chunk columns of 48 px
    n_tiles = int(np.prod(p.geometry(slide).grid.shape))
    res = predict_slide_to_omezarr(p, slide, tmp_path / "d.zarr", chunk=48, tissue_only=False)
    assert res.tiles_predicted == model.tiles == n_tiles  # strip 4 predicted the tiles at its border twice
    model.tiles = 0
    narrow = predict_slide_to_omezarr(p, slide, tmp_path / "n.zarr", chunk=48, tissue_only=False, strip=4)
    assert narrow.tiles_predicted > n_tiles
    for (pa, ma), (pb, mb) in zip(_read_all(tmp_path / "d.zarr"), _read_all(tmp_path / "n.zarr")):
        assert np.array_equal(pa, pb) and np.array_equal(ma, mb)  # the same bytes however the plan cuts it


@pytest.mark.parametrize("finishers", [1, 2])
def test_resume_after_crash_skips_finished_chunks(tmp_path, monkeypatch, finishers):
    """A failure while chunks are finished stops the run (on the pool too: chunks already running finish and
    are recorded); the resume predicts only the rest and ends with a fresh run's bytes."""
    from protoseg.infer import tile_pipeline

    monkeypatch.setattr(tile_pipeline, "finish_threads", lambda: finishers)
    slide, model, p = _setup()
    out = tmp_path / "r.zarr"

    class Crash(Exception):
        pass

    def crash_after_3(done, total):
        if done >= 3:
            raise Crash("killed")

    with pytest.raises(Crash):
        predict_slide_to_omezarr(p, slide, out, chunk=48, tissue_only=False, progress=crash_after_3)
    pz = open_prediction(out)
    done = pz.group["done"][...].astype(bool)
    assert 3 <= done.sum() <= 3 + (finishers - 1) and not pz.complete
    finished = {tuple(ix) for ix in np.argwhere(done)}
    n_done = int(done.sum())

    model.tiles = 0
    calls = []
    res = predict_slide_to_omezarr(
        p, slide, out, chunk=48, tissue_only=False, progress=lambda d, t: calls.append(d), strip=8
    )  # one strip: each tile is predicted once
    assert res.chunks_resumed == n_done and res.chunks_predicted == 20 - n_done
    assert calls[0] == n_done and calls[-1] == 20
    # tiles computed = tiles touching any unfinished chunk (nothing for chunks already done)
    grid = p.geometry(slide).grid
    needed = set()
    for r in range(4):
        for c in range(5):
            if (r, c) not in finished:
                x0, y0 = c * 48, r * 48
                for t in np.ndindex(*grid.shape):
                    ox, oy = grid.origin(t)
                    if ox < min(x0 + 48, 200) and ox + 32 > x0 and oy < min(y0 + 48, 150) and oy + 32 > y0:
                        needed.add(t)
    assert model.tiles == res.tiles_predicted == len(needed)
    assert open_prediction(out).complete

    fresh = tmp_path / "fresh.zarr"
    predict_slide_to_omezarr(p, slide, fresh, chunk=48, tissue_only=False)
    for (pa, ma), (pb, mb) in zip(_read_all(out), _read_all(fresh)):
        assert np.array_equal(pa, pb) and np.array_equal(ma, mb)
    model.tiles = 0
    again = predict_slide_to_omezarr(p, slide, out, chunk=48, tissue_only=False)  # finished: nothing to do
    assert again.chunks_resumed == 20 and model.tiles == 0


def test_tissue_only_skips_background_chunks(tmp_path):
    slide, model, p = _setup()

    class TopRowTissue:
        def fraction(self, x, y, w, h):
            return 0.4 if y < 48 else 0.0

    res = predict_slide_to_omezarr(p, slide, tmp_path / "t.zarr", chunk=48, tissue=TopRowTissue())
    assert res.chunks_background == 15 and res.chunks_predicted == 5
    probs, mask = _read_all(tmp_path / "t.zarr")[0]
    assert np.all(mask[48:] == 3) and np.all(probs[3, 48:] == 255) and np.all(probs[:3, 48:] == 0)
    grid = p.geometry(slide).grid
    assert model.tiles == len(grid.tiles_for_box((0, 0, 200, 48)))
    lazy = LazyPrediction(p, slide, chunk=48)
    assert np.array_equal(mask[:48], np.asarray(lazy.mask(0))[:48])


@pytest.mark.parametrize("tissue_only", [False, True])
def test_coarse_levels_are_built_while_writing_with_the_same_bytes(tmp_path, monkeypatch, tissue_only):
    """A fresh run builds every coarse chunk from the chunks as they finish (background ones as constants):
    nothing is read back at the end, and the levels equal those built afterwards from the stored level 0."""
    from protoseg.infer import batch

    slide, _model, p = _setup()

    class LeftTissue:
        def fraction(self, x, y, w, h):
            return 0.4 if x < 96 else 0.0

    kwargs = dict(chunk=48, tissue_only=tissue_only, tissue=LeftTissue() if tissue_only else None, strip=2)
    read_back: list[int] = []

    class Spy(batch.StreamingPyramid):
        def build_missing(self, read):
            read_back.append(super().build_missing(read))
            return read_back[-1]

    class Afterwards(Spy):
        def __init__(self, *args, **kw):
            super().__init__(*args, **{**kw, "enabled": False})

    monkeypatch.setattr(batch, "StreamingPyramid", Spy)
    res = predict_slide_to_omezarr(p, slide, tmp_path / "stream.zarr", **kwargs)
    assert read_back == [0] and (res.chunks_background > 0) is tissue_only
    monkeypatch.setattr(batch, "StreamingPyramid", Afterwards)
    predict_slide_to_omezarr(p, slide, tmp_path / "after.zarr", **kwargs)
    assert read_back[-1] > 0  # the reference really read its coarse levels back
    for (pa, ma), (pb, mb) in zip(_read_all(tmp_path / "stream.zarr"), _read_all(tmp_path / "after.zarr")):
        assert np.array_equal(pa, pb) and np.array_equal(ma, mb)


def test_omezarr_metadata(tmp_path):
    slide, _, p = _setup(60, 70)
    predict_slide_to_omezarr(p, slide, tmp_path / "m.zarr", chunk=32, tissue_only=False)
    root = json.loads((tmp_path / "m.zarr" / "zarr.json").read_text())["attributes"]["protoseg"]
    assert root["classes"]["names"] == ["TUM", "STR", "LYM"] and root["mpp"] == 0.5 and root["complete"]
    probs = json.loads((tmp_path / "m.zarr" / "probs" / "zarr.json").read_text())["attributes"]["ome"]
    ms = probs["multiscales"][0]
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"] and ms["axes"][1]["unit"] == "micrometer"
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0], [1.0, 2.0, 2.0]]
    assert [c["label"] for c in probs["omero"]["channels"]] == ["TUM", "STR", "LYM", "background"]
    assert probs["omero"]["channels"][0]["color"] == "FF0000"
    mask = json.loads((tmp_path / "m.zarr" / "mask" / "zarr.json").read_text())["attributes"]["ome"]
    assert mask["image-label"]["colors"][3] == {"label-value": 3, "rgba": [255, 255, 255, 255]}
    assert open_prediction(tmp_path / "m.zarr").mask(2).shape == (15, 18)


def test_output_errors_never_touch_user_data(tmp_path):
    slide, _, p = _setup(40, 40)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match=r"foreign/notes\.txt, not written by protoseg"):
        predict_slide_to_omezarr(p, slide, foreign, chunk=32)
    assert (foreign / "notes.txt").read_text() == "mine" and len(list(foreign.iterdir())) == 1
    afile = tmp_path / "file.txt"
    afile.write_text("x")
    with pytest.raises(OutputError):
        predict_slide_to_omezarr(p, slide, afile / "out.zarr", chunk=32)
    with pytest.raises(OutputError, match="is a file"):
        predict_slide_to_omezarr(p, slide, afile, chunk=32)
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            with pytest.raises(OutputError, match="cannot write"):
                predict_slide_to_omezarr(p, slide, ro / "out.zarr", chunk=32)
        finally:
            ro.chmod(0o700)
    ok = tmp_path / "ok.zarr"
    predict_slide_to_omezarr(p, slide, ok, chunk=32, tissue_only=False)
    with pytest.raises(OutputError, match="another slide or model"):
        predict_slide_to_omezarr(p, slide, ok, chunk=16, tissue_only=False)
    with pytest.raises(OutputError, match="already exists"):
        predict_slide_to_omezarr(p, slide, ok, chunk=32, tissue_only=False, resume=False)
    res = predict_slide_to_omezarr(p, slide, ok, chunk=16, tissue_only=False, overwrite=True)
    assert res.chunks_predicted == 9 and open_prediction(ok).complete


def test_pyramidal_tiff_slide_with_real_tissue_mask(tmp_path):
    from protoseg.slide.writer import write_pyramidal_tiff

    img = np.full((256, 320, 3), 245, np.uint8)
    img[40:200, 30:150] = smooth_image(160, 120, seed=2) // 2 + np.array([110, 40, 100], np.uint8)
    path = tmp_path / "s.tif"
    write_pyramidal_tiff(path, img, mpp=0.25, tile_size=64, compression=None)
    model = Counting(SmoothModel())
    p = Predictor(model, classes=CLASSES, mpp=0.5, tile_size=32, overlap=8)
    res = predict_slide_to_omezarr(p, str(path), tmp_path / "s.zarr", chunk=32)
    assert res.chunks_total == 20 and 0 < res.chunks_predicted < 20
    probs, mask = _read_all(tmp_path / "s.zarr")[0]
    assert mask.shape == (128, 160)
    assert np.all(mask[:, 128:] == 3)  # glass-only chunks are background
    lazy = LazyPrediction(p, str(path), chunk=32, tissue_only=True)
    assert np.array_equal(probs, np.asarray(lazy.probs(0)))


def test_real_slides(tmp_path):
    tcga, cmu = SHARED / "tcga-cr-7395-01a-01-ts1.svs", SHARED / "cmu-1-small-region.svs"
    if not (tcga.exists() and cmu.exists()):
        pytest.skip(f"real test slides not present in {SHARED}")
    p = Predictor(SmoothModel(), classes=CLASSES, mpp=4.0, tile_size=32, overlap=8, batch_size=16)
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        predict_slide_to_omezarr(p, str(tcga), tmp_path / "x.zarr")
    assert not (tmp_path / "x.zarr").exists()
    from protoseg.slide import open_slide

    assert p.geometry(open_slide(tcga), slide_mpp=0.5).grid.width == round(4443 / 8)
    res = predict_slide_to_omezarr(p, str(cmu), tmp_path / "cmu.zarr", chunk=128)
    pz = open_prediction(tmp_path / "cmu.zarr")
    assert pz.mask(0).shape == (round(2967 * 0.499 / 4), round(2220 * 0.499 / 4))
    assert (
        res.chunks_predicted > 0 and pz.complete and pz.attrs["layout"]["slide_mpp"] == pytest.approx(0.499, abs=1e-3)
    )


def test_cpu_defaults_keep_the_measured_fast_path():
    """Issue 22 item 15: on the CPU the model sees channels-last (NHWC) input, two readers, and chunks are
    finished between batches (no writer thread beside the model); accelerators keep channels-last and
    several writers. NCHW input on the CPU cost the
    whole-slide pipeline 1.4-1.6x (benchmarks/infer_pipeline.py)."""
    from protoseg.infer.predictor import channels_last_default
    from protoseg.infer.tile_pipeline import default_readers, default_writers

    assert default_writers("cpu") == 0 and default_readers("cpu") == 2
    assert default_writers("cuda") >= 2
    assert channels_last_default("cpu") and channels_last_default("cuda")
    _slide, model, p = _setup()
    assert p.channels_last
    seen = []
    to_input = p._input
    p._input = lambda t: seen.append(to_input(t)) or seen[-1]  # the tensor the model is called with
    tiles = np.random.default_rng(0).integers(0, 256, (3, p.tile_size, p.tile_size, 3), dtype=np.uint8)
    fast = p.predict_tiles(tiles)
    assert seen and all(x.is_contiguous(memory_format=torch.channels_last) for x in seen)
    plain = Predictor(model, classes=p.classes, mpp=p.mpp, tile_size=p.tile_size, device="cpu", channels_last=False)
    assert np.allclose(fast, plain.predict_tiles(tiles), atol=1e-5)


def test_done_record_is_written_in_batches_and_never_claims_unwritten_chunks(tmp_path, monkeypatch):
    """Issue 22 item 15: the resume record is written at most every DONE_INTERVAL_S (one zarr write, not one
    per chunk); a chunk is marked only after its data, and everything marked is written by ``flush``."""
    from protoseg.infer.done_record import DoneRecord

    stored = np.zeros((2, 3), np.uint8)
    record = DoneRecord(stored, interval=3600.0)
    record.mark(0, 1)
    record.mark(1, 2)
    assert not stored.any()  # not yet written: a kill now loses these two chunks' work, never claims more
    record.flush()
    assert stored.tolist() == [[0, 1, 0], [0, 0, 1]]
    eager = DoneRecord(stored, interval=0.0)
    eager.mark(1, 0)
    assert stored[1, 0] == 1

    writes = []
    flush = DoneRecord.flush
    monkeypatch.setattr(DoneRecord, "flush", lambda self: writes.append(int(self._dirty)) or flush(self))
    slide, _model, p = _setup()
    res = predict_slide_to_omezarr(p, slide, tmp_path / "b.zarr", chunk=48, tissue_only=False)
    assert res.chunks_predicted == 20 and sum(writes) < 20  # far fewer record writes than chunks
    assert open_prediction(tmp_path / "b.zarr").group["done"][...].all()
