"""Device paths of the Predictor: blending and quantising on the device (exercised on CPU tensors, and on
CUDA when present), autocast dtype, channels_last, batch size per device, pinned host copies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.infer.batch import predict_slide_to_omezarr
from protoseg.infer.blending import blend_tiles, blend_tiles_torch, make_window
from protoseg.infer.chunks import chunk_from_device_scores
from protoseg.infer.device import amp_dtype, default_batch_size, to_host
from protoseg.infer.memory import ArraySlide
from protoseg.infer.omezarr import open_prediction
from protoseg.infer.predictor import Predictor
from protoseg.infer.pyramid import chunk_from_scores
from protoseg.infer.tile_pipeline import default_readers
from test_infer_fakes import CLASSES, SmoothModel, smooth_image

torch.set_num_threads(1)
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA not available on this machine")


def _tiles(n=6, c=4, t=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand((n, c, t, t), generator=g)
    return p / p.sum(dim=1, keepdim=True)


def test_torch_blend_equals_numpy_blend_bit_for_bit() -> None:
    window = make_window(32, "cosine", 0.1)
    probs = _tiles()
    origins = [(0, 0), (24, 0), (48, 0), (0, 24), (24, 24), (48, 24)]
    box = (5, 3, 70, 50)
    ref = blend_tiles(box, [(*o, p.numpy()) for o, p in zip(origins, probs)], window, 4)
    got = blend_tiles_torch(box, [(*o, p) for o, p in zip(origins, probs)], torch.from_numpy(window), 4)
    assert got.dtype == torch.float32
    np.testing.assert_array_equal(got.numpy(), ref)
    a, b = chunk_from_scores(ref), chunk_from_device_scores(got)
    np.testing.assert_array_equal(a.probs, b.probs)
    np.testing.assert_array_equal(a.mask, b.mask)


def test_device_quantise_rounds_half_to_even_and_ties_go_low() -> None:
    scores = torch.tensor([[[0.5 / 255, 1.5 / 255]], [[0.5 / 255, 0.2]]], dtype=torch.float32)
    ref = chunk_from_scores(scores.numpy())
    got = chunk_from_device_scores(scores)
    np.testing.assert_array_equal(got.probs, ref.probs)
    np.testing.assert_array_equal(got.mask, ref.mask)  # the tie at pixel 0 goes to class 0 in both


def test_device_blend_pipeline_writes_the_same_bytes(tmp_path) -> None:
    slide = ArraySlide(smooth_image(130, 170, seed=3), mpp=0.5)
    outs = []
    for name, flag in (("host", False), ("device", True)):
        p = Predictor(
            SmoothModel(),
            classes=CLASSES,
            mpp=0.5,
            tile_size=32,
            overlap=8,
            batch_size=5,
            device="cpu",
            device_blend=flag,
        )
        assert p.device_blend is flag and p.predict_for_blend(np.zeros((1, 32, 32, 3), np.uint8))[0].__class__ is (
            torch.Tensor if flag else np.ndarray
        )
        predict_slide_to_omezarr(p, slide, tmp_path / f"{name}.zarr", chunk=48, tissue_only=False, strip=2)
        pz = open_prediction(tmp_path / f"{name}.zarr")
        outs.append([(pz.probs(k)[...], pz.mask(k)[...]) for k in range(pz.num_levels)])
    for (pa, ma), (pb, mb) in zip(*outs, strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ma, mb)


def test_channels_last_and_defaults_on_cpu() -> None:
    p = Predictor(SmoothModel(), classes=CLASSES, tile_size=32, overlap=8, device="cpu", channels_last=True)
    assert p.batch_size == default_batch_size(torch.device("cpu")) == 16
    x = p._input(np.zeros((2, 32, 32, 3), np.uint8))
    assert x.is_contiguous(memory_format=torch.channels_last)
    ref = Predictor(SmoothModel(), classes=CLASSES, tile_size=32, overlap=8, device="cpu", channels_last=False)
    tiles = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    np.testing.assert_allclose(p.predict_tiles(tiles), ref.predict_tiles(tiles), atol=1e-6)
    assert not p.device_blend and p.channels_last
    assert default_readers("cpu") == 2 and default_readers("cuda") >= 2
    assert amp_dtype(torch.device("cpu"), "bf16") is torch.bfloat16
    with pytest.raises(ValueError, match="amp dtype"):
        amp_dtype(torch.device("cpu"), "int8")
    np.testing.assert_array_equal(to_host(torch.arange(4)), np.arange(4))


@cuda
def test_cuda_device_path_matches_its_own_host_blend(tmp_path) -> None:
    slide = ArraySlide(smooth_image(130, 170, seed=3), mpp=0.5)
    outs = []
    for name, flag in (("host", False), ("device", True)):
        p = Predictor(
            SmoothModel(),
            classes=CLASSES,
            mpp=0.5,
            tile_size=32,
            overlap=8,
            device="cuda",
            amp=False,
            device_blend=flag,
        )
        predict_slide_to_omezarr(p, slide, tmp_path / f"{name}.zarr", chunk=48, tissue_only=False, strip=2)
        pz = open_prediction(tmp_path / f"{name}.zarr")
        outs.append([(pz.probs(k)[...], pz.mask(k)[...]) for k in range(pz.num_levels)])
    for (pa, ma), (pb, mb) in zip(*outs, strict=True):
        np.testing.assert_array_equal(pa, pb)
        np.testing.assert_array_equal(ma, mb)


def test_compile_modes_are_checked() -> None:
    from protoseg.infer.errors import InferenceError
    from protoseg.infer.predictor import compile_mode

    assert compile_mode(True) == "default" and compile_mode("reduce-overhead") == "reduce-overhead"
    with pytest.raises(InferenceError, match="reduce-overhead"):
        Predictor(SmoothModel(), classes=CLASSES, tile_size=32, overlap=8, device="cpu", compile="cuda-graphs")


@cuda
def test_cuda_graphs_give_the_eager_scores() -> None:
    tiles = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    kw = {"classes": CLASSES, "tile_size": 32, "overlap": 8, "device": "cuda", "amp": False, "batch_size": 16}
    eager = Predictor(SmoothModel(), **kw).predict_tiles(tiles)
    graphed = Predictor(SmoothModel(), compile="reduce-overhead", **kw)
    for _ in range(2):  # recorded, then replayed (and the short last batch of 8 records its own graph)
        np.testing.assert_allclose(graphed.predict_tiles(tiles), eager, atol=1e-4)


@cuda
def test_cuda_defaults_amp_and_pinned_copy() -> None:
    p = Predictor(SmoothModel(), classes=CLASSES, tile_size=32, overlap=8, device="cuda")
    assert p.device_blend and p.channels_last and p.batch_size >= 16
    assert p.amp_dtype in (torch.bfloat16, torch.float16)
    tiles = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    dev = p.predict_tiles_device(tiles)
    assert dev.device.type == "cuda" and dev.dtype == torch.float32 and dev.shape == (40, 4, 32, 32)
    cpu = Predictor(SmoothModel(), classes=CLASSES, tile_size=32, overlap=8, device="cpu")
    np.testing.assert_allclose(p.predict_tiles(tiles), cpu.predict_tiles(tiles), atol=2e-2)  # bf16/fp16
    u8 = torch.arange(256, dtype=torch.uint8, device="cuda")
    np.testing.assert_array_equal(to_host(u8), np.arange(256, dtype=np.uint8))


def test_lazy_window_computes_only_the_box_and_equals_chunks() -> None:
    from protoseg.infer.lazy import LazyPrediction
    from test_infer_fakes import Counting

    slide = ArraySlide(smooth_image(150, 170, seed=7), mpp=0.5)
    model = Counting(SmoothModel())
    p = Predictor(model, classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4, device="cpu")
    lazy = LazyPrediction(p, slide, chunk=64)
    box = (30, 20, 101, 77)  # x0, y0, x1, y1: the "viewport", across chunk borders
    win = lazy.window(*box)
    grid = lazy.layout.geom.grid
    assert model.tiles == len(grid.tiles_for_box((30, 20, 71, 57)))  # the box's tiles, not its chunks' tiles
    probs, mask = lazy.read(0, 20, 77, 30, 101)  # the same pixels through whole chunks
    np.testing.assert_array_equal(win.probs, probs)
    np.testing.assert_array_equal(win.mask, mask)
