"""The ``protoseg demo``: open the sample slide in napari (interactive, or headless with screenshots)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)


def _settle(viewer, rounds: int = 20) -> None:
    """Let Qt and napari's async slicing draw the visible chunks before a screenshot."""
    import time

    from qtpy.QtWidgets import QApplication

    for _ in range(rounds):
        QApplication.processEvents()
        time.sleep(0.05)


def save_screenshot(viewer, path: Path) -> Path:
    """Canvas screenshot to PNG; refuses to write a blank image (uniform canvas)."""
    _settle(viewer)
    img = viewer.screenshot(str(path), canvas_only=True, flash=False)
    if np.asarray(img)[..., :3].std() < 1.0:
        raise RuntimeError(f"screenshot {path} is blank: the slide did not render")
    logger.info("screenshot written to %s", path)
    return path


def open_sample(viewer):
    """Add the sample slide (via the plugin reader) and show a µm scale bar."""
    from protoseg.napari.sample import sample_slide_path

    layers = viewer.open(str(sample_slide_path()), plugin="protoseg")
    viewer.scale_bar.visible = True
    viewer.scale_bar.unit = "um"
    viewer.reset_view()
    return layers[0]


def run_demo(out_dir: str | Path = "demo_out", headless: bool = False) -> list[Path]:
    """Open napari with the sample slide; headless: write screenshots of each step and exit."""
    import napari

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # a shown window even when headless: under Xvfb only a mapped GL canvas renders
    viewer = napari.Viewer(show=True, title="protoseg demo")
    viewer.window._qt_window.resize(1280, 900)
    open_sample(viewer)
    shots: list[Path] = []
    if headless:
        shots.append(save_screenshot(viewer, out / "01_slide.png"))
        viewer.close()
        return shots
    napari.run()
    return shots
