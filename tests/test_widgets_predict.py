"""Predict widget driven like a user: lazy CAM/mask overlays aligned with the slide, values equal to
Predictor.predict_region, slides without mpp, whole-slide batch with progress / cancel / resume, exports,
area table and documentation screenshots."""

from __future__ import annotations

import csv
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

import timm  # noqa: F401  - load torch/timm native libs before Qt (avoids a crash importing them later)
import torch

from protoseg.classes import BCSS_WSSS
from widget_support import DOC_IMAGES, settle, widget_screenshot

TCGA = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
CHUNK = 64  # small chunks: a 768x512 slide at 0.5 um/px gives a 384x256 prediction with a 4-level pyramid


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> dict[str, Path]:
    """A tiny real checkpoint (SegNet/resnet18, 4 classes, 1 um/px, 64 px tiles) and a synthetic slide."""
    from PIL import Image

    from protoseg.data.synthetic.writers import write_synthetic_slide
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.models.factory import build_model
    from protoseg.slide import open_slide

    root = tmp_path_factory.mktemp("predict")
    slide = write_synthetic_slide(root / "slide.tiff", size=(768, 512), mpp=0.5, seed=0).path
    rgb = np.asarray(open_slide(slide).read_region((0, 0), 0, (768, 512)))[..., :3]
    Image.fromarray(np.ascontiguousarray(rgb)).save(root / "nompp.png")  # a slide without mpp metadata
    torch.manual_seed(3)
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 4, "decoder_dim": 16}
    model = build_model(cfg)
    # calibrate BatchNorm statistics on slide crops so the untrained net gives several classes (colourful overlays)
    x = torch.from_numpy(rgb[::2, ::2].copy()).permute(2, 0, 1)[None].float() / 255
    crops = torch.cat([x[..., i : i + 64, j : j + 64] for i in range(0, 192, 64) for j in range(0, 320, 64)])
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(crops)
        model.decoder.classify.weight.mul_(3)
    ckpt = Checkpoint(
        stage=Stage.STAGE2, model_config=cfg, state_dict=model.state_dict(), classes=BCSS_WSSS, mpp=1.0, patch_size=64
    )
    return {"ckpt": save_checkpoint(ckpt, root / "model.pt"), "slide": slide, "png": root / "nompp.png"}


def _viewer_with_widget(make_napari_viewer, path: Path):
    from protoseg.napari.widgets.predict import PredictWidget

    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1280, 860)
    slide = viewer.open(str(path), plugin="protoseg")[0]
    widget = PredictWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Predict", area="right")
    widget.device.setCurrentText("cpu")
    widget.chunk.setValue(CHUNK)
    widget.batch.setValue(8)
    return viewer, slide, widget


def _type_checkpoint(qtbot, widget, path: Path) -> None:
    from qtpy.QtCore import Qt

    widget.checkpoint.edit.clear()
    qtbot.keyClicks(widget.checkpoint.edit, str(path))
    qtbot.keyClick(widget.checkpoint.edit, Qt.Key.Key_Return)


def _click(qtbot, button) -> None:
    from qtpy.QtCore import Qt

    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)


def _extent_edges(layer) -> np.ndarray:
    """World extent of the data including the outer half pixels: [[min_y, min_x], [max_y, max_x]]."""
    ext = np.asarray(layer.extent.world)[:, -2:]
    half = np.asarray(layer.scale)[-2:] / 2
    return np.stack([ext[0] - half, ext[1] + half])


def _show(qtbot, widget) -> None:
    """Click 'Show overlays' and wait until the layers are added (the model loads in a worker)."""
    _click(qtbot, widget.show_btn)
    qtbot.waitUntil(lambda: widget.overlays_ready, timeout=60_000)
    settle(0.3)


def _wait_overlays(widget, qtbot) -> None:
    assert widget.scheduler.wait_idle(60)
    settle(0.5)  # lets the throttled refresh re-read the layers
    assert widget.scheduler.wait_idle(60)


def _colour_fractions(img: np.ndarray, colours: list[tuple[int, int, int]]) -> np.ndarray:
    rgb = img[..., :3].astype(int)
    return np.array([(np.abs(rgb - np.array(c)).max(axis=-1) <= 8).mean() for c in colours])


# ---- layer data without a viewer ------------------------------------------------------------------
def test_lazy_layers_compute_only_what_is_read_and_match_predict_region(assets) -> None:
    from protoseg.infer import LazyPrediction, Predictor
    from protoseg.infer.pyramid import quantize
    from protoseg.napari.overlays import MASK_OFFSET, Placement, cam_display, lazy_layer_data, mask_colormap
    from protoseg.napari.scheduler import ChunkScheduler

    predictor = Predictor(assets["ckpt"], device="cpu", batch_size=8)
    lazy = LazyPrediction(predictor, str(assets["slide"]), chunk=CHUNK)
    sched = ChunkScheduler(lazy)
    placement = Placement.on_slide((0.5, 0.5), (0.0, 0.0), lazy.layout.geom.scale, ("um", "um"))
    assert placement.scale == (1.0, 1.0) and placement.translate == (0.25, 0.25)  # 2x2 slide px, centre shift
    data = lazy_layer_data(sched, BCSS_WSSS, placement, shown=2)
    assert [k for _, _, k in data] == ["image"] * 4 + ["labels"]
    assert [m["visible"] for _, m, _ in data[:4]] == [False, False, True, False]
    mask_levels = data[-1][0]
    assert [lv.shape for lv in mask_levels] == [(256, 384), (128, 192), (64, 96), (32, 48)]

    first = mask_levels[0][64:128, 128:192]  # level-0 chunk (1, 2): not computed yet
    assert first.dtype == np.uint8 and not first.any() and predictor.tiles_predicted == 0
    assert sched.wait_idle(60)
    assert 0 < predictor.tiles_predicted < 20  # that chunk's tiles only (the slide has 48)
    region = predictor.predict_region(str(assets["slide"]), (256, 128, 128, 128))  # level-0 px = 2 prediction px
    assert region.box == (128, 64, 64, 64)
    np.testing.assert_array_equal(mask_levels[0][64:128, 128:192], region.mask + MASK_OFFSET)
    cam1 = data[1][0][0][64:128, 128:192]
    expected = cam_display(quantize(region.probs), 1)  # class score damped by background: p_1 * (1 - p_bg)
    np.testing.assert_allclose(cam1, expected, atol=1)
    assert (cam1 == expected).mean() > 0.99
    assert mask_levels[0][70, 130] == region.mask[6, 2] + 1  # integer indexing
    sched.close()

    cmap = mask_colormap(BCSS_WSSS)  # label value -> RGBA: 0 pending, c+1 class c, 5 background
    rgba = cmap.map(np.arange(6))
    assert rgba[0, 3] == 0 and rgba[5, 3] == 0
    np.testing.assert_allclose(rgba[1:5, :3] * 255, np.array(BCSS_WSSS.colors), atol=0.5)


# ---- overlays in the viewer --------------------------------------------------------------------------
def test_show_overlays_aligned_lazy_and_coloured(make_napari_viewer, qtbot, assets, monkeypatch) -> None:
    from protoseg.infer import Predictor
    from protoseg.napari.overlays import MASK_OFFSET
    from protoseg.napari.widgets._common import checkpoint_ready

    viewer, slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    checkpoint_ready.emit(str(assets["ckpt"]))  # what the Train widget sends when it finishes
    assert widget.checkpoint.text() == str(assets["ckpt"])
    _type_checkpoint(qtbot, widget, assets["ckpt"])
    assert [widget.class_combo.itemText(i) for i in range(4)] == list(BCSS_WSSS.names)
    assert widget.legend.rows == [
        (n, "#{:02x}{:02x}{:02x}".format(*c)) for n, c in zip(BCSS_WSSS.names, BCSS_WSSS.colors)
    ]
    assert widget.slide.layer() is slide and "0.5" in widget.mpp_hint.text()
    widget.class_combo.setCurrentIndex(1)
    threads: list[bool] = []
    original = Predictor.predict_tiles

    def spy(self, tiles):
        threads.append(threading.current_thread() is threading.main_thread())
        return original(self, tiles)

    monkeypatch.setattr(Predictor, "predict_tiles", spy)
    n_before = len(viewer.layers)
    _show(qtbot, widget)

    added = list(viewer.layers)[n_before:]
    cams = [ly for ly in added if ly._type_string == "image"]
    labels = [ly for ly in added if ly._type_string == "labels"]
    assert len(cams) == 1 and len(labels) == 1 and len(added) == 2  # one CAM layer: the class chosen in the dock
    assert all(ly.multiscale and len(ly.data) == 4 for ly in added)
    assert all(ly.blending == "additive" and tuple(ly.contrast_limits) == (0, 255) for ly in cams)
    assert all(ly.data[0].dtype == np.uint8 for ly in added)
    cam = cams[0]
    assert cam.visible and cam.name == "STR CAM"
    for c, rgb in enumerate(BCSS_WSSS.colors):  # colormap of each class: transparent black -> class colour
        widget.class_combo.setCurrentIndex(c)
        assert cam.name == f"{BCSS_WSSS.names[c]} CAM" and cam.metadata["protoseg_overlay"]["index"] == c
        np.testing.assert_allclose(cam.colormap.colors[-1], [*(v / 255 for v in rgb), 1.0])
        assert cam.colormap.colors[0][3] == 0
    np.testing.assert_allclose(_extent_edges(labels[0]), _extent_edges(slide), atol=2 * slide.scale[0])
    np.testing.assert_allclose(_extent_edges(cam), _extent_edges(slide), atol=2 * slide.scale[0])
    mask = labels[0]
    assert not mask.editable  # a model output: no paint tools (painting the lazy array raised TypeError)
    widget.opacity.setValue(35)  # the dock's overlay opacity, not the slide's
    assert cam.opacity == mask.opacity == 0.35 and slide.opacity == 1.0

    def legend_texts() -> list[str]:  # the legend's texts are added one per event-loop turn
        return sorted(o.text for k, o in viewer.canvas.overlays.items() if str(k).startswith("protoseg_legend"))

    qtbot.waitUntil(lambda: len(legend_texts()) == 4, timeout=10_000)
    assert legend_texts() == sorted(f"■ {n}" for n in BCSS_WSSS.names)
    for c, rgb in enumerate(BCSS_WSSS.colors):
        np.testing.assert_allclose(mask.colormap.map(c + MASK_OFFSET)[:3] * 255, rgb, atol=0.5)
    assert mask.colormap.map(BCSS_WSSS.background_index + MASK_OFFSET)[3] == 0  # background transparent
    assert list(mask.features["class"])[1:5] == list(BCSS_WSSS.names)

    widget.class_combo.setCurrentIndex(3)  # choose another CAM: the CAM layer shows it
    assert cam.visible and cam.name == "NEC CAM"

    _wait_overlays(widget, qtbot)
    assert threads and not any(threads)  # the model never ran on the GUI thread: the viewer stays responsive
    predictor = widget.predictor()
    region = predictor.predict_region(str(assets["slide"]), (384, 256, 128, 128))
    np.testing.assert_array_equal(mask.data[0][128:192, 192:256], region.mask + MASK_OFFSET)

    # what the canvas shows: the mask colours of the classes the model predicts
    for ly in [slide, *cams]:
        ly.visible = False
    mask.opacity = 1.0
    settle(0.8)
    shown = np.asarray(viewer.screenshot(canvas_only=True, flash=False))
    fractions = _colour_fractions(shown, list(BCSS_WSSS.colors))
    level0 = mask.data[0][:, :]
    present = np.bincount(level0.ravel(), minlength=6)[1:5] / level0.size
    assert fractions.max() > 0.05 and set(np.flatnonzero(fractions > 0.02)) <= set(np.flatnonzero(present > 0))
    assert np.argmax(fractions) == np.argmax(present)

    slide.visible, cam.visible, mask.opacity = True, True, 0.6
    settle(0.8)
    canvas = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]
    assert canvas.std() > 10
    _save_small(canvas, DOC_IMAGES / "overlay_mask.png")
    window = widget_screenshot(viewer, "predict")
    swatches = _colour_fractions(window, list(BCSS_WSSS.colors)) * window.shape[0] * window.shape[1]
    assert window.std() > 10 and (swatches >= 100).all()  # the docked legend shows every class colour
    assert (DOC_IMAGES / "widget_predict.jpg").stat().st_size < 200_000


def test_overlays_compute_only_the_chunks_on_screen(make_napari_viewer, qtbot, assets) -> None:
    from widget_support import Heartbeat, record_stall

    viewer, _slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    widget.set_checkpoint(assets["ckpt"])
    viewer.camera.center, viewer.camera.zoom = (40.0, 60.0), 10.0  # a corner, zoomed in (world units: um)
    settle(0.3)
    beat = Heartbeat()
    beat.reset()
    _show(qtbot, widget)
    record_stall("Predict: Show overlays", beat)
    _wait_overlays(widget, qtbot)
    sched, mask = widget.scheduler, widget.overlays[-1]
    total = int(np.prod(sched.lazy.layout.chunk_grid(0).shape))
    assert mask.data_level == 0 and total == 24
    (y0, x0), (y1, x1) = mask.corner_pixels[:, -2:]
    on_screen = sched.chunks_in(0, int(y0), int(y1) + 1, int(x0), int(x1) + 1)
    assert sched.computed == len(on_screen) and 0 < len(on_screen) <= 6  # the corner only, not the slide
    assert sched.lazy.chunks_computed == sched.computed  # no coarse chunk was computed from finer ones

    viewer.camera.zoom = 0.4  # zoomed far out: a coarse level on screen shows what exists, computes nothing
    settle(0.6)
    assert widget.scheduler.wait_idle(30)
    assert mask.data_level > 0 and sched.computed == len(on_screen)
    shown = np.asarray(mask.data[mask.data_level][...])
    assert shown.any() and not shown.all()  # the computed corner, downsampled; transparent elsewhere
    assert viewer.layers.selection.active is _slide  # the overlays were added without taking the selection

    # the canvas legend is hidden with its overlays and shown again, not rebuilt (GL text visuals), for new ones
    from protoseg.napari.widgets.overlay_layers import add_canvas_legend, canvas_legend

    qtbot.waitUntil(lambda: len(canvas_legend(viewer)) == 4 and all(o.visible for o in canvas_legend(viewer)))
    legend = canvas_legend(viewer)
    for ly in list(widget.overlays):  # the user deletes the overlays
        viewer.layers.remove(ly)
    assert canvas_legend(viewer) == legend and not any(o.visible for o in legend)
    again = add_canvas_legend(viewer, widget.classes, staggered=True)
    assert all(a is b for a, b in zip(again, legend, strict=True)) and all(o.visible for o in legend)
    settle(0.3)

    # napari's own cost of adding an Image and a Labels layer of the same size from numpy (for the report)
    pyramid = [np.zeros((256 >> k, 384 >> k), np.uint8) for k in range(4)]
    beat.reset()
    viewer.add_image(pyramid, multiscale=True, contrast_limits=(0, 255), blending="additive")
    settle(0.5)
    viewer.add_labels(pyramid, multiscale=True, opacity=0.6)
    settle(0.5)
    record_stall("napari baseline: add_image + add_labels (numpy, same size)", beat)
    beat.stop()


def test_steps_run_one_per_event_loop_turn(qtbot) -> None:
    """Timers and input run between the steps of an overlay sequence (Qt runs zero-delay timers queued by
    one another back to back, so a 0 ms chain would be one long stall)."""
    from itertools import pairwise

    from protoseg.napari.widgets.overlay_layers import run_in_turns
    from widget_support import Heartbeat

    beats: list[int] = []
    beat = Heartbeat()
    original = beat._beat
    count = [0]

    def counting() -> None:
        count[0] += 1
        original()

    beat._timer.timeout.disconnect()
    beat._timer.timeout.connect(counting)

    def step() -> None:
        beats.append(count[0])
        time.sleep(0.03)  # a step as slow as adding a layer: the 10 ms heartbeat is due after each

    run_in_turns([step] * 6)
    qtbot.waitUntil(lambda: len(beats) == 6, timeout=5_000)
    beat.stop()
    assert all(b > a for a, b in pairwise(beats)), beats


def test_overlay_layers_are_added_without_taking_the_selection(make_napari_viewer) -> None:
    from protoseg.napari.widgets.overlay_layers import add_layer_quietly

    viewer = make_napari_viewer()
    slide = viewer.add_image(np.zeros((32, 32), np.uint8), name="slide")
    from napari.layers import Labels

    mask = add_layer_quietly(viewer, Labels(np.zeros((32, 32), np.uint8)))
    assert mask in viewer.layers and viewer.layers.selection.active is slide
    other = viewer.add_image(np.zeros((32, 32), np.uint8))  # napari's own adds still select the new layer
    assert viewer.layers.selection.active is other


def test_bulk_allocations_postpone_collection_and_free_garbage_later() -> None:
    import gc
    import weakref

    from protoseg.napari.widgets.predict import bulk_allocations

    class Node:
        pass

    assert gc.isenabled()
    frozen = gc.get_freeze_count()  # objects gl_guard froze when an earlier test opened a dock
    with bulk_allocations():
        assert not gc.isenabled()
        with bulk_allocations():  # nested (two workers): collection resumes after the outer block only
            pass
        assert not gc.isenabled()
        node = Node()
        node.self = node  # cyclic garbage made meanwhile
        ref = weakref.ref(node)
        del node
    assert gc.isenabled() and ref() is not None and gc.get_freeze_count() == frozen
    gc.collect()
    assert ref() is None


def _save_small(img: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    pil = Image.fromarray(np.ascontiguousarray(img))
    pil.quantize(colors=128, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(path, optimize=True)
    assert path.stat().st_size < 300_000


def test_slide_without_mpp_asks_for_it(make_napari_viewer, qtbot, assets) -> None:
    from protoseg.napari.widgets import slide_info
    from protoseg.napari.widgets.regions import RegionTagWidget

    slide_info._USER_MPP.clear()
    viewer, slide, widget = _viewer_with_widget(make_napari_viewer, assets["png"])
    assert tuple(slide.scale) == (1.0, 1.0)
    assert "no microns-per-pixel" in widget.mpp_hint.text() and widget.mpp_hint.ask.isVisibleTo(widget)
    widget.set_checkpoint(assets["ckpt"])
    n = len(viewer.layers)
    _show(qtbot, widget)
    assert (
        len(viewer.layers) == n
        and "no microns-per-pixel" in widget.status.text()
        and "Slide mpp" in widget.status.text()
    )
    regions = RegionTagWidget(viewer)  # another widget asks the same question about the same slide
    assert regions.mpp_prompt.ask.isVisibleTo(regions)
    widget.mpp_hint.spin.setValue(0.5)  # the user answers once: scanned at 20x
    _click(qtbot, widget.mpp_hint.button)
    assert not widget.mpp_hint.ask.isVisibleTo(widget) and "0.5 µm/px (set by you)" in widget.mpp_hint.text()
    assert not regions.mpp_prompt.ask.isVisibleTo(regions) and slide_info.slide_mpp(slide) == 0.5
    assert tuple(slide.scale) == (0.5, 0.5) and tuple(str(u) for u in slide.units) == ("micrometer",) * 2
    _show(qtbot, widget)
    added = list(viewer.layers)[n:]
    assert len(added) == 2 and all(tuple(ly.scale) == (1.0, 1.0) for ly in added)  # 1 µm/px model, in µm
    np.testing.assert_allclose(_extent_edges(added[-1]), _extent_edges(slide), atol=2)
    _wait_overlays(widget, qtbot)
    region = widget.predictor().predict_region(str(assets["png"]), (256, 0, 128, 128), slide_mpp=0.5)
    np.testing.assert_array_equal(added[-1].data[0][0:64, 128:192], region.mask + 1)  # on screen: computed


@pytest.mark.skipif(not TCGA.is_file(), reason="real slides in ../shared/data/slides are absent")
def test_real_slide_without_mpp_gets_a_clear_message(make_napari_viewer, qtbot, assets) -> None:
    viewer, _slide, widget = _viewer_with_widget(make_napari_viewer, TCGA)
    assert "no microns-per-pixel" in widget.mpp_hint.text() and "scan resolution" in widget.mpp_hint.text()
    widget.set_checkpoint(assets["ckpt"])
    n = len(viewer.layers)
    _click(qtbot, widget.batch_btn)  # neither the batch nor the overlays start without a resolution
    _click(qtbot, widget.show_btn)
    assert len(viewer.layers) == n and widget.job is None
    assert "tcga" in widget.status.text() and "Slide mpp" in widget.status.text()


# ---- whole slide, cancel/resume, exports ---------------------------------------------------------
def _wait_batch(qtbot, widget, timeout: int = 60_000):
    qtbot.waitUntil(lambda: widget.job is not None and widget.job.finished, timeout=timeout)
    return widget.outcome


def test_batch_cancel_resume_open_and_export(make_napari_viewer, qtbot, assets, tmp_path, monkeypatch) -> None:
    from protoseg.infer import Predictor, open_prediction

    viewer, slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    widget.set_checkpoint(assets["ckpt"])
    widget.tissue.setChecked(False)
    out = tmp_path / "slide.zarr"
    widget.out.setText(str(out))

    original = Predictor.predict_tiles

    def slow(self, tiles):  # slow the model down (7 batches of 8 tiles) so that Cancel lands mid-run
        time.sleep(0.3)
        return original(self, tiles)

    monkeypatch.setattr(Predictor, "predict_tiles", slow)
    from widget_support import Heartbeat, record_stall

    beat = Heartbeat()
    beat.reset()
    started = time.perf_counter()
    _click(qtbot, widget.batch_btn)
    assert widget.bar.maximum() == 0 and widget.job.running  # a busy bar at once, while the model loads
    print(f"Whole slide: progress visible after {time.perf_counter() - started:.2f} s")
    qtbot.waitUntil(lambda: widget.bar.value() >= 2, timeout=30_000)
    record_stall("Predict: Whole slide start", beat)
    beat.stop()
    _click(qtbot, widget.cancel_btn)
    outcome = _wait_batch(qtbot, widget)
    assert outcome.cancelled and 2 <= outcome.done < outcome.total == 24
    partial = open_prediction(out)
    assert not partial.complete and int(np.asarray(partial.group["done"][...]).sum()) >= outcome.done
    monkeypatch.setattr(Predictor, "predict_tiles", original)

    _click(qtbot, widget.batch_btn)  # runs again: resumes
    outcome2 = _wait_batch(qtbot, widget)
    assert not outcome2.cancelled and outcome2.result.chunks_resumed >= outcome.done
    assert outcome2.result.chunks_predicted == 24 - outcome2.result.chunks_resumed
    assert widget.bar.value() == widget.bar.maximum() == 24
    pred = open_prediction(out)
    assert pred.complete
    region = widget.predictor().predict_region(
        str(assets["slide"]), (0, 256, 768, 256)
    )  # across cancelled/resumed chunks
    np.testing.assert_array_equal(pred.mask(0)[128:256, :], region.mask)
    scores = np.rint(region.probs.astype(np.float64) * 255)  # tiles batched differently: allow 1/255
    np.testing.assert_allclose(pred.probs(0)[:, 128:256, :], scores, atol=1)

    batch_layers = [ly for ly in viewer.layers if ly.name.endswith("(batch)")]
    assert len(batch_layers) == 2 and batch_layers[-1]._type_string == "labels"  # the chosen CAM + the mask
    np.testing.assert_array_equal(np.asarray(batch_layers[-1].data[0]), pred.mask(0)[...] + 1)
    np.testing.assert_allclose(_extent_edges(batch_layers[-1]), _extent_edges(slide), atol=1.0)

    files = {k: widget.export(k, tmp_path / f"export.{k}") for k in ("ome-tiff", "geojson", "areas")}
    job = widget.export("ome-zarr", tmp_path / "copy.zarr", wait=False)  # what the button does: in a worker
    qtbot.waitUntil(lambda: job.finished, timeout=30_000)
    assert open_prediction(tmp_path / "copy.zarr").complete

    import tifffile

    with tifffile.TiffFile(files["ome-tiff"]) as tif:
        np.testing.assert_array_equal(tif.series[0].levels[0].asarray(), pred.mask(0)[...])
    doc = json.loads(files["geojson"].read_text())
    names = {f["properties"]["classification"]["name"] for f in doc["features"]}
    counts = np.bincount(pred.mask(0)[...].ravel(), minlength=5)
    # one object per connected region; regions under the default minimum area (µm², 1 µm/px here) are dropped
    from scipy import ndimage

    from protoseg.export.geojson import DEFAULT_MIN_AREA_UM2

    def largest(c: int) -> int:
        lab, n = ndimage.label(pred.mask(0)[...] == c)
        return int(np.bincount(lab.ravel())[1:].max()) if n else 0

    assert names == {BCSS_WSSS.names[c] for c in range(4) if largest(c) >= DEFAULT_MIN_AREA_UM2}
    assert names <= {BCSS_WSSS.names[c] for c in range(4) if counts[c]}
    with files["areas"].open() as fh:
        rows = list(csv.DictReader(fh))
    expected_mm2 = counts * (1.0 * 1e-3) ** 2  # 1 um/px prediction pixels
    np.testing.assert_allclose([float(r["area_mm2"]) for r in rows], expected_mm2, rtol=1e-6)
    table = widget.areas
    assert table.rowCount() == 4
    assert [table.item(i, 0).text() for i in range(4)] == list(BCSS_WSSS.names)
    np.testing.assert_allclose([float(table.item(i, 1).text()) for i in range(4)], expected_mm2[:4], atol=1e-4)


def test_show_again_after_the_user_deletes_the_overlays(make_napari_viewer, qtbot, assets) -> None:
    """Deleting the overlays at once (as napari's delete button does) then showing them again, twice: napari
    crashed here in glDrawArrays (software GL) before protoseg's docks installed ``gl_guard``; the guard
    settles once for the several removals, and not at all for a layer of the user's own."""
    viewer, _slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    user_layer = viewer.add_image(np.zeros((8, 8), np.uint8), name="mine")
    viewer.layers.remove(user_layer)
    settle(0.2)
    assert widget._gl_guard.settled == 0  # the user's own layers are not protoseg's business
    widget.set_checkpoint(assets["ckpt"])
    viewer.camera.center, viewer.camera.zoom = (40.0, 60.0), 10.0
    settle(0.3)
    _show(qtbot, widget)
    _wait_overlays(widget, qtbot)
    from widget_support import Heartbeat, record_stall

    beat = Heartbeat()
    beat.reset()
    viewer.layers.selection.clear()
    viewer.layers.selection.update(widget.overlays)
    names_before = list(widget.overlays)
    viewer.layers.remove_selected()  # several layers in one event-loop turn
    settle(0.3)
    record_stall("Predict: delete the overlay layers", beat)
    beat.stop()
    assert widget._gl_guard.settled == len(names_before)  # one collection + repaint per overlay removed
    for _ in range(2):
        _show(qtbot, widget)
        _wait_overlays(widget, qtbot)
        settle(0.5)
    names = [ly.name for ly in viewer.layers]
    assert sum(n.startswith("class mask") for n in names) == 1  # showing again replaced, never stacked
    assert np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].std() > 10


def test_clearing_overlays_while_they_are_being_added_leaves_no_layer_behind(make_napari_viewer, qtbot, assets) -> None:
    from protoseg.infer.lazy import LazyPrediction

    viewer, slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    widget.set_checkpoint(assets["ckpt"])
    n = len(viewer.layers)
    lazy = LazyPrediction(widget.predictor(), str(assets["slide"]), chunk=CHUNK)
    widget._add_overlays(slide, lazy, staggered=True)  # steps queued, one per event-loop turn
    widget._clear_overlays()  # e.g. a whole-slide result opened meanwhile
    qtbot.waitUntil(lambda: widget.overlays_ready, timeout=10_000)
    settle(0.3)
    assert len(viewer.layers) == n and widget.overlays == [] and widget.scheduler is None


def test_predict_this_view_fills_the_overview_and_can_be_stopped(make_napari_viewer, qtbot, assets) -> None:
    """Zoomed out, the view shows a coarse level that never makes the model run: 'Predict this view' says
    what it costs, computes the visible level-0 chunks in the background (centre first) and the overview and
    the layer thumbnail show the result; 'Stop' leaves the rest uncomputed."""
    viewer, _slide, widget = _viewer_with_widget(make_napari_viewer, assets["slide"])
    widget.set_checkpoint(assets["ckpt"])
    viewer.reset_view()
    viewer.camera.zoom = viewer.camera.zoom / 6  # the overview of a slide far larger than the screen
    settle(0.3)
    _show(qtbot, widget)
    qtbot.waitUntil(lambda: widget._view_key is not None and widget.view_btn.isEnabled(), timeout=10_000)
    mask = next(ly for ly in widget.overlays if isinstance(ly, __import__("napari").layers.Labels))
    assert mask.data_level > 0 and widget.scheduler.computed == 0  # the overview computes nothing by itself
    total = len(widget._view_region())
    assert f"this view: {total} chunks" in widget.view_info.text()
    thumb_before = np.asarray(mask.thumbnail).astype(int)
    cam_thumb_before = np.asarray(widget.cam_layer().thumbnail).astype(int)
    shot_before = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    slide_px = shot_before.sum(-1) > 60  # the small slide on the black canvas (and the legend's text)

    assert widget.predict_view() == total
    qtbot.waitUntil(lambda: "this view is predicted" in widget.view_info.text(), timeout=120_000)
    assert widget.scheduler.region_done == total and widget.scheduler.tiles_per_second > 0
    settle(1.5)  # the throttled refresh hands napari the overview again
    shot = np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3].astype(int)
    changed = (np.abs(shot - shot_before).max(-1) > 30)[slide_px].mean()
    assert changed > 0.3, changed  # the class colours now cover the overview's tissue
    assert np.abs(np.asarray(mask.thumbnail).astype(int) - thumb_before).max() > 50  # the thumbnail shows it too
    cam_thumb = np.asarray(widget.cam_layer().thumbnail).astype(int)
    assert np.abs(cam_thumb - cam_thumb_before).max() > 0  # the CAM thumbnail too (dim: an untrained model)
    assert "this view is computed" in widget.view_info.text() or not widget._view_region()
    viewer.reset_view()
    widget_screenshot(viewer, "predict_this_view")

    _show(qtbot, widget)  # a fresh overlay: nothing computed; start and stop at once
    qtbot.waitUntil(lambda: widget.view_btn.isEnabled(), timeout=10_000)
    queued = widget.predict_view()
    widget.stop_view_prediction()
    assert widget.scheduler.wait_idle(60)
    assert widget.scheduler.region_done < queued and "stopped" in widget.view_info.text()
