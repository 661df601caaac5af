"""Correct and retrain, driven like a user from the Predict dock napari opens: paint corrections over the
overlay (saved as painted, reopened with the slide), QuPath GeoJSON out and in, retrain in a child process
(the overlay switches to the new checkpoint, the parent is untouched and Undo goes back), the uncertainty
overlay and the next region to review."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("error:Private attribute access:FutureWarning")]

from widget_support import SAMPLE, Heartbeat, settle, widget_screenshot


@pytest.fixture(scope="module")
def run_checkpoint(tmp_path_factory) -> Path:
    """A small stage-2 checkpoint (resnet18, 4 classes, 1 µm/px, 64 px tiles) in a run folder."""
    import torch

    from protoseg.classes import BCSS_WSSS
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.models.factory import build_model

    torch.manual_seed(0)
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 4, "decoder_dim": 16}
    ckpt = Checkpoint(
        stage=Stage.STAGE2,
        model_config=cfg,
        state_dict=build_model(cfg).state_dict(),
        classes=BCSS_WSSS,
        mpp=1.0,
        patch_size=64,
    )
    folder = tmp_path_factory.mktemp("run") / "stage2"
    folder.mkdir()
    return save_checkpoint(ckpt, folder / "best.pt")


def _wait(predicate, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        settle(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def _idle_gap(beat: Heartbeat, seconds: float = 2.0) -> float:
    """napari's own longest GUI gap while idle in the same viewer (the baseline)."""
    beat.reset()
    settle(seconds)
    return beat.longest_ms


def test_correct_retrain_undo_and_review(make_napari_viewer, run_checkpoint, tmp_path) -> None:
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1366, 768)
    viewer.open(str(SAMPLE), plugin="protoseg")
    _dock, dock = viewer.window.add_plugin_dock_widget("protoseg", "Predict")
    dock.device.setCurrentText("cpu")
    dock.chunk.setValue(128)
    dock.batch.setValue(8)
    dock.set_checkpoint(run_checkpoint)
    viewer.camera.center, viewer.camera.zoom = (150.0, 150.0), 3.0  # model resolution: the view computes
    dock.show_overlays(background=True)
    _wait(lambda: dock.overlays_ready and len(dock.overlays) == 2, 120, "the overlays")
    _wait(lambda: dock.scheduler.computed > 0 and not dock.scheduler.pending(), 120, "the on-screen chunks")
    box = dock.correct

    # paint: two strokes of class 2 (STR) and one of class 3 (LYM), saved as painted
    box.correct_btn.click()
    layer = box.layer
    assert layer is not None and layer.mode == "paint" and layer in viewer.layers
    assert box.window is not None
    layer.brush_size = 12
    beat = Heartbeat()
    baseline = _idle_gap(beat)
    beat.reset()
    for label, (r, c) in ((2, (20, 20)), (2, (24, 30)), (3, (60, 60))):
        layer.selected_label = label
        layer.paint((r, c), label)
        settle(0.3)  # the debounced save runs between strokes, as while a user paints
    _wait(lambda: box.store is not None and box.store.counts().get("STR", 0) > 0, 10, "the saved corrections")
    settle(0.5)
    painting = beat.longest_ms
    print(f"GUI gaps (ms): idle {baseline:.0f}, painting + saving {painting:.0f}")
    assert painting <= baseline + 100
    counts = box.store.counts()
    assert counts["STR"] > 100 and counts["LYM"] > 50 and counts["TUM"] == 0, counts
    store_path = Path(box.store.path)

    # leave and re-enter Correct mode: the layer comes back with what was saved
    box.correct_btn.click()
    assert box.layer is None and not any(ly.name.startswith("corrections") for ly in viewer.layers)
    box.correct_btn.click()
    again = np.asarray(box.layer.data)
    assert (again == 2).sum() == counts["STR"] and (again == 3).sum() == counts["LYM"]

    # QuPath GeoJSON out, and back in
    out = box.export_geojson(tmp_path / "corrections.geojson")
    features = json.loads(out.read_text())["features"]
    names = {f["properties"]["classification"]["name"] for f in features}
    assert names == {"STR", "LYM"} and all(f["properties"].get("objectType", "annotation") for f in features)
    box.layer.data = np.zeros_like(again)  # the user erases everything...
    box.save()
    box.flush()
    assert sum(box.store.counts().values()) == 0
    assert box.import_geojson(out) > 0  # ... and imports the export again
    assert box.store.counts()["STR"] == counts["STR"] and box.store.counts()["LYM"] == counts["LYM"]

    # retrain in a child process: a new checkpoint, the parent untouched, the overlay switches to it
    parent_bytes = hashlib.sha256(run_checkpoint.read_bytes()).hexdigest()
    box.epochs.setValue(1)
    lazy = dock.scheduler.lazy
    rows, cols = lazy.layout.chunk_grid(0).shape
    key = next((0, r, c) for r in range(rows) for c in range(cols) if lazy.layout.has_tissue(r, c))  # model-run
    old_probs = np.asarray(dock.scheduler.lazy.chunk(*key).probs).copy()
    beat.reset()
    job = box.retrain()
    assert job.running and not box.retrain_btn.isEnabled()
    _wait(lambda: not job.running, 240, "the retrain")
    retraining = beat.longest_ms
    after = _idle_gap(beat)
    print(f"GUI gaps (ms): idle {baseline:.0f} / {after:.0f}, retraining (child process) {retraining:.0f}")
    assert retraining <= max(baseline, after) + 100
    assert "retrained" in box.status.text(), box.status.text()
    new = Path(dock.checkpoint.text())
    assert new != run_checkpoint.resolve() and new.is_file()
    assert hashlib.sha256(run_checkpoint.read_bytes()).hexdigest() == parent_bytes
    from protoseg.train.retrain import checkpoint_lineage

    lineage = checkpoint_lineage(new)
    assert lineage is not None and lineage["parent_sha256"] == parent_bytes
    _wait(lambda: dock.overlays_ready and len(dock.overlays) == 2, 120, "the overlays of the new checkpoint")
    assert store_path.is_dir() and dock.scheduler.lazy.cached_chunk(*key) is None  # nothing of the old model
    new_probs = np.asarray(dock.scheduler.lazy.chunk(*key).probs)
    assert (new_probs != old_probs).any()  # the overlay shows the retrained model's scores

    # undo goes back to the parent
    assert Path(box.undo_retrain()) == run_checkpoint.resolve()
    assert Path(dock.checkpoint.text()).resolve() == run_checkpoint.resolve()
    _wait(lambda: dock.overlays_ready and len(dock.overlays) == 2, 120, "the parent's overlays")
    _wait(lambda: dock.scheduler.computed > 0 and not dock.scheduler.pending(), 120, "the parent's chunks")

    # where to look next: an uncertainty overlay, and the most uncertain region not reviewed yet
    unc = box.show_uncertainty()
    assert unc in viewer.layers and np.asarray(unc.data).dtype == np.uint8
    before = tuple(viewer.camera.center)
    found = box.next_region()
    assert found is not None and int(np.asarray(box.store.reviewed[:]).sum()) == 1
    y0, y1, x0, x1 = box.store.block_box(*found)
    shown = box.store.read_accepted(y0, y1, x0, x1)  # what the overlay showed there is kept as accepted
    lazy, c0 = dock.scheduler.lazy, dock.scheduler.lazy.layout.chunk
    chunks = [(cy, cx) for cy in range(y0 // c0, -(-y1 // c0)) for cx in range(x0 // c0, -(-x1 // c0))]
    cy, cx = next(k for k in chunks if lazy.cached_chunk(0, *k) is not None)  # the block holds a computed chunk
    gy, gx = max(y0, cy * c0), max(x0, cx * c0)
    assert shown[gy - y0, gx - x0] == lazy.cached_chunk(0, cy, cx).mask[gy - cy * c0, gx - cx * c0]
    assert "reviewed 1/" in box.counter.text()
    assert tuple(viewer.camera.center) != before or found == (0, 0)
    widget_screenshot(viewer, "correct")
