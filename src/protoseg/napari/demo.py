"""The ``protoseg demo``: sample slide in napari → train a small model on synthetic data from the Train
widget (progress + loss curve) → lazy CAM and mask overlays from the Predict widget.

Interactive by default; ``headless`` drives the same widgets without user input, writes a screenshot
of each step and exits (run it under Xvfb: only a mapped GL canvas renders).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """A CPU-sized run: a few minutes on 2 cores (PBIP stage 1, pseudo-masks, stage 2; random-init ResNet-18)."""

    n_train: int = 112
    n_val: int = 16
    patch: int = 96
    epochs: int = 2
    epochs2: int = 2  # stage 2 on the pseudo-masks: dense masks for the overlays
    batch: int = 16
    lr: float = 1e-3
    backbone: str = "resnet18"
    recipe: str = "pbip"
    chunk: int = 256


def _settle(viewer, seconds: float = 1.0) -> None:
    """Let the progressive slide layers load what is on screen and Qt draw it before a screenshot."""
    from qtpy.QtWidgets import QApplication

    from protoseg.napari.refresh import wait_slide_layers

    wait_slide_layers(viewer, timeout=30.0)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def save_screenshot(viewer, path: Path, canvas_only: bool = False) -> Path:
    """Screenshot to PNG; refuses to write a blank image (uniform canvas)."""
    _settle(viewer)
    img = viewer.screenshot(str(path), canvas_only=canvas_only, flash=False)
    if np.asarray(img)[..., :3].std() < 1.0:
        raise RuntimeError(f"screenshot {path} is blank: nothing rendered")
    logger.info("screenshot written to %s", path)
    return path


def zoom_to_model_resolution(viewer, overlay, slide_layer) -> None:
    """Zoom into the slide's centre until the overlay is drawn at the model's resolution (one prediction
    pixel per screen pixel): the overlays are computed for what is on screen at that zoom."""
    extent = np.asarray(slide_layer.extent.world, dtype=np.float64)[:, -2:]
    camera = getattr(viewer, "scene", viewer).camera  # napari 0.9: viewer.scene.camera
    camera.center = tuple((extent[0] + extent[1]) / 2)
    camera.zoom = 1.0 / float(np.asarray(overlay.scale)[-1])


def open_sample(viewer):
    """Add the sample slide (via the plugin reader) and show a µm scale bar."""
    from protoseg.napari.sample import sample_slide_path

    layers = viewer.open(str(sample_slide_path()), plugin="protoseg")
    viewer.scale_bar.visible = True
    viewer.reset_view()
    return layers[0]


def _demo_dataset(out: Path, s: DemoSettings) -> Path:
    from protoseg.data.synthetic.writers import write_bcss_dataset

    root = out / "data"
    if not (root / "train").is_dir():
        write_bcss_dataset(root, n_train=s.n_train, n_val=s.n_val, n_test=0, size=s.patch, seed=1)
    return root


def _configure_training(train, data: Path, out: Path, s: DemoSettings) -> None:
    train.source.setCurrentIndex(0)
    train.folder.setText(str(data))
    train.recipe.setCurrentText(s.recipe)
    train.backbone.setCurrentText(s.backbone)
    train.set_weights(None)  # random init: nothing to download
    train.epochs.setValue(s.epochs)
    train.batch.setValue(s.batch)
    train.lr.setValue(s.lr)
    train.patch.setValue(s.patch)
    train.device.setCurrentText("cpu")
    train.out.setText(str(out / "run"))
    train.epochs2.setValue(s.epochs2)
    train.stage2.setChecked(True)


def run_demo(
    out_dir: str | Path = "demo_out",
    headless: bool = False,
    settings: DemoSettings | None = None,
) -> list[Path]:
    """Run the demo; returns the screenshots written (headless) or [] after the window closes."""
    import napari

    from protoseg.napari.widgets.predict import PredictWidget
    from protoseg.napari.widgets.train import TrainWidget

    s = settings or DemoSettings()
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="protoseg demo")
    viewer.window.resize(1400, 900)
    slide_layer = open_sample(viewer)
    shots: list[Path] = []
    if headless:
        shots.append(save_screenshot(viewer, out / "01_slide.png"))
    # the docks open the way Plugins > protoseg opens them (napari hands them its PublicOnlyProxy viewer)
    predict_dock, predict = viewer.window.add_plugin_dock_widget("protoseg", "Predict")
    _train_dock, train = viewer.window.add_plugin_dock_widget("protoseg", "Train", tabify=True)
    assert isinstance(predict, PredictWidget) and isinstance(train, TrainWidget)
    predict.chunk.setValue(s.chunk)
    _configure_training(train, _demo_dataset(out, s), out, s)

    def show_overlays(_path: str = "") -> None:
        predict.slide.setCurrentText(slide_layer.name)
        predict.status.guard(predict.show_overlays)

    from protoseg.napari.widgets._common import checkpoint_ready

    checkpoint_ready.connect(show_overlays)  # the Train widget offers its checkpoint when done
    job = train.start()
    if not headless:
        napari.run()
        return shots
    t0, mid_shot = time.monotonic(), False
    while job.running:
        _settle(viewer, 0.2)
        if not mid_shot and train.bar.value() >= 0.5 * max(1, train.bar.maximum()):
            shots.append(save_screenshot(viewer, out / "02_training.png"))
            mid_shot = True
    _settle(viewer, 0.5)
    logger.info("demo training finished in %.0f s", time.monotonic() - t0)
    if not mid_shot:
        shots.append(save_screenshot(viewer, out / "02_training.png"))
    if train.outcome is None or not predict.overlays:
        raise RuntimeError(f"demo training did not produce overlays: {train.status.text()}")
    predict.set_visible_class(0)
    predict_dock.raise_()
    zoom_to_model_resolution(viewer, predict.overlays[-1], slide_layer)
    _settle(viewer, 0.5)  # the Predict widget sees the new view and queues the chunks on screen
    if predict.scheduler is not None:
        deadline = time.monotonic() + 300
        while not predict.scheduler.wait_idle(0.2) and time.monotonic() < deadline:
            _settle(viewer, 0.2)
    _settle(viewer, 2.0)
    shots.append(save_screenshot(viewer, out / "03_overlays.png"))
    slide_layer.visible = False
    shots.append(save_screenshot(viewer, out / "04_mask_only.png", canvas_only=True))
    viewer.close()
    return shots
