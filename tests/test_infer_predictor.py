"""Predictor: device choice, exact seamless blending, tiling independence, edges, mpp, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.infer.blending import BlendWindow, make_window
from protoseg.infer.device import autocast_for, select_device
from protoseg.infer.errors import InferenceError
from protoseg.infer.grid import PredictionGrid
from protoseg.infer.memory import ArraySlide
from protoseg.infer.predictor import Predictor
from protoseg.infer.reader import PadMode, RegionReader
from protoseg.models.checkpoint import Checkpoint, CheckpointError, Stage, save_checkpoint
from protoseg.runtime import DeviceError
from protoseg.slide import MissingMppError
from test_infer_fakes import CLASSES, ColourModel, ConstantModel, SmoothModel, TileMeanModel, smooth_image

torch.set_num_threads(1)


def test_select_device_order(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr("protoseg.runtime._mps_available", lambda: False)
    assert select_device("auto") == torch.device("cpu")
    monkeypatch.setattr("protoseg.runtime._mps_available", lambda: True)
    assert select_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda")
    assert select_device("cpu") == torch.device("cpu")


def test_select_device_errors(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="CUDA is not available"):
        select_device("cuda")
    with pytest.raises(DeviceError, match="unknown device"):
        select_device("tpu-ish")


def test_autocast_only_on_cuda():
    with autocast_for(torch.device("cpu"), amp=True):
        assert not torch.is_autocast_enabled("cpu")
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_cosine_window_matches_formula():
    t, floor = 16, 0.1
    pos = (np.arange(t) + 0.5) / t
    w1 = floor + (1 - floor) * (1 - np.cos(2 * np.pi * pos)) / 2
    ref = np.round(np.multiply.outer(w1, w1) * 4096) / 4096
    win = make_window(t, BlendWindow.COSINE, floor)
    np.testing.assert_array_equal(win, ref)
    assert win.min() > 0 and np.array_equal(win, win.T) and np.array_equal(win, win[::-1, ::-1])
    assert np.all(make_window(8, "uniform") == 1.0)


def test_grid_covers_and_lists_intersecting_tiles():
    g = PredictionGrid(100, 70, tile=32, overlap=8)
    rows, cols = g.shape
    for r in range(rows):
        for c in range(cols):
            x, y = g.origin((r, c))
            assert (x, y) == (c * 24 - 4, r * 24 - 4)
    box = (30, 10, 20, 25)
    brute = [
        (r, c)
        for r in range(rows)
        for c in range(cols)
        if g.origin((r, c))[0] < 50
        and g.origin((r, c))[0] + 32 > 30
        and g.origin((r, c))[1] < 35
        and g.origin((r, c))[1] + 32 > 10
    ]
    assert g.tiles_for_box(box) == brute
    last_x, last_y = g.origin((rows - 1, cols - 1))
    assert last_x + 32 >= 100 and last_y + 32 >= 70


def test_constant_model_has_no_seams():
    slide = ArraySlide(smooth_image(90, 130), mpp=0.5)
    values = (0.1, 0.2, 0.3, 0.4)
    p = Predictor(ConstantModel(values), classes=CLASSES, mpp=0.5, tile_size=32, overlap=12)
    r = p.predict_region(slide, (0, 0, 130, 90))
    expected = np.asarray(values, np.float32)[:, None, None]
    assert r.probs.shape == (4, 90, 130)
    assert np.array_equal(r.probs, np.broadcast_to(expected, r.probs.shape))  # bit-exact across tile borders
    assert np.all(r.mask == 3)


@pytest.mark.parametrize("tile,overlap,window", [(32, 8, "cosine"), (48, 20, "cosine"), (40, 0, "uniform")])
def test_pixelwise_model_is_tiling_independent(tile, overlap, window):
    img = smooth_image(70, 95, seed=3)
    slide = ArraySlide(img, mpp=0.5)
    p = Predictor(ColourModel(), classes=CLASSES, mpp=0.5, tile_size=tile, overlap=overlap, window=window, batch_size=5)
    r = p.predict_region(slide, (0, 0, 95, 70))
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255.0
    ref = ColourModel().predict(x)[0].numpy()
    assert np.array_equal(r.probs, ref)
    assert np.array_equal(r.mask, ref.argmax(0).astype(np.uint8))


def test_blending_matches_explicit_weighted_average():
    img = smooth_image(20, 26, seed=5)
    slide = ArraySlide(img, mpp=1.0)
    t, ov = 8, 4
    p = Predictor(TileMeanModel(), classes=CLASSES, mpp=1.0, tile_size=t, overlap=ov)
    r = p.predict_region(slide, (0, 0, 26, 20))
    padded = np.full((40, 50, 3), 255, np.uint8)
    padded[10:30, 10:36] = img
    pos = (np.arange(t) + 0.5) / t
    w1 = 0.1 + 0.9 * np.sin(np.pi * pos) ** 2
    num = np.zeros((4, 20, 26))
    den = np.zeros((20, 26))

    def origins(length):  # from -overlap/2, every stride, until a tile reaches the end
        out = [-2]
        while out[-1] + t < length:
            out.append(out[-1] + 4)
        return out

    for oy in origins(20):
        for ox in origins(26):
            m = padded[oy + 10 : oy + 18, ox + 10 : ox + 18].reshape(-1, 3).astype(np.float32).mean(0) / 255
            v = np.append(m, 0.3)
            v = v / v.sum()
            for yy in range(max(0, oy), min(20, oy + t)):
                for xx in range(max(0, ox), min(26, ox + t)):
                    w = round(w1[yy - oy] * w1[xx - ox] * 4096) / 4096
                    num[:, yy, xx] += w * v
                    den[yy, xx] += w
    np.testing.assert_allclose(r.probs, num / den, rtol=0, atol=2e-6)


def test_region_equals_crop_of_whole_slide():
    slide = ArraySlide(smooth_image(64, 80, seed=1), mpp=0.5)
    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=24, overlap=8)
    whole = p.predict_region(slide, (0, 0, 80, 64)).probs
    part = p.predict_region(slide, (13, 21, 30, 17))
    assert part.box == (13, 21, 30, 17)
    assert np.array_equal(part.probs, whole[:, 21:38, 13:43])


def test_reader_pads_white_or_reflect():
    img = smooth_image(10, 12, seed=2)
    slide = ArraySlide(img, mpp=1.0)
    white = RegionReader(slide, 1.0, PadMode.WHITE).read((-3, -2, 8, 6))
    ref = np.full((6, 8, 3), 255, np.uint8)
    ref[2:, 3:] = img[:4, :5]
    assert np.array_equal(white, ref)
    refl = RegionReader(slide, 1.0, PadMode.REFLECT).read((-3, 8, 6, 4))
    assert np.array_equal(refl, np.pad(img[8:10, 0:3], ((0, 2), (3, 0), (0, 0)), mode="symmetric"))


def test_missing_slide_mpp_error_and_override():
    slide = ArraySlide(smooth_image(40, 40), mpp=None)
    p = Predictor(ColourModel(), classes=CLASSES, mpp=0.5, tile_size=16, overlap=4)
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        p.predict_region(slide, (0, 0, 40, 40))
    r = p.predict_region(slide, (0, 0, 40, 40), slide_mpp=0.25)  # model at 2x coarser resolution
    assert r.probs.shape == (4, 20, 20) and r.mpp == 0.5 and r.scale == 2.0


def test_resampled_prediction_matches_block_colours():
    # 8x8 blocks of flat colour at 0.25 um/px, predicted at 0.5 um/px: 4x4 flat blocks
    rng = np.random.default_rng(4)
    colours = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
    img = colours.repeat(8, 0).repeat(8, 1)
    slide = ArraySlide(img, mpp=0.25, levels=2)
    p = Predictor(ColourModel(), classes=CLASSES, mpp=0.5, tile_size=16, overlap=4)
    r = p.predict_region(slide, (0, 0, img.shape[1], img.shape[0]))
    assert r.probs.shape == (4, 24, 28)
    ref = ColourModel().predict(torch.from_numpy(colours).permute(2, 0, 1)[None].float() / 255)[0].numpy()
    inner = r.probs[:, 1::4, 1::4]  # centre-ish pixel of each 4x4 block, away from block edges
    np.testing.assert_allclose(inner, ref, atol=1e-6)


def test_predict_tiles_values_tta_and_errors():
    p = Predictor(ColourModel(), classes=CLASSES, tile_size=8, batch_size=3)
    tiles = np.random.default_rng(0).integers(0, 256, (7, 8, 8, 3)).astype(np.uint8)
    out = p.predict_tiles(tiles)
    ref = ColourModel().predict(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255).numpy()
    assert out.dtype == np.float32 and np.array_equal(out, ref)
    assert p.tiles_predicted == 7
    tta = Predictor(ColourModel(), classes=CLASSES, tile_size=8, tta=True).predict_tiles(tiles)
    np.testing.assert_allclose(tta, ref, atol=1e-6)  # pixel-wise model is flip-equivariant
    wrong = Predictor(ConstantModel((0.5, 0.5)), classes=CLASSES, tile_size=8)
    with pytest.raises(InferenceError, match="expected"):
        wrong.predict_tiles(tiles)
    with pytest.raises(InferenceError, match="uint8"):
        p.predict_tiles(tiles.astype(np.float32))
    with pytest.raises(InferenceError, match="classes"):
        Predictor(ColourModel())


def _tiny_checkpoint(path, mpp=0.5):
    from protoseg.models import build_model

    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 3, "decoder_dim": 8, "weights": None}
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = Checkpoint(Stage.STAGE2, cfg, model.state_dict(), CLASSES, mpp=mpp, patch_size=32)
    save_checkpoint(ckpt, path)
    return model.eval()


def test_checkpoint_predictor_matches_model(tmp_path):
    model = _tiny_checkpoint(tmp_path / "m.pt")
    p = Predictor(tmp_path / "m.pt", device="cpu")
    assert p.tile_size == 32 and p.mpp == 0.5 and p.classes == CLASSES and p.overlap == 8
    tiles = np.random.default_rng(1).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    ref = model.predict(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255).numpy()
    np.testing.assert_allclose(p.predict_tiles(tiles), ref, atol=1e-5)
    r = p.predict_region(ArraySlide(smooth_image(40, 50), mpp=0.5), (0, 0, 50, 40))
    np.testing.assert_allclose(r.probs.sum(0), 1.0, atol=1e-5)


def test_corrupt_checkpoint_gives_checkpoint_error(tmp_path):
    bad = tmp_path / "random.pt"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096).astype(np.uint8).tobytes())
    with pytest.raises(CheckpointError):
        Predictor(bad)
    _tiny_checkpoint(tmp_path / "ok.pt")
    data = (tmp_path / "ok.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or damaged"):
        Predictor(tmp_path / "cut.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        Predictor(tmp_path / "missing.pt")


def test_weights_hash_once_for_a_loaded_checkpoint_and_fresh_for_a_passed_module(tmp_path, monkeypatch):
    """Issue 22 item 15: a checkpoint's weights are hashed when the predictor loads them, not for every slide;
    a module the caller passed (and may still train) is hashed each time."""
    from protoseg.infer import predictor as pred_mod
    from protoseg.infer.identity import model_sha256

    model = _tiny_checkpoint(tmp_path / "m.pt")
    p = Predictor(tmp_path / "m.pt", device="cpu")
    assert p.weights_sha256() == model_sha256(model)
    monkeypatch.setattr(pred_mod, "model_sha256", lambda m: pytest.fail("hashed again"))
    assert p.weights_sha256() == model_sha256(model)
    monkeypatch.undo()
    q = Predictor(model, classes=CLASSES, mpp=0.5, tile_size=32, device="cpu")
    before = q.weights_sha256()
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    assert q.weights_sha256() != before
