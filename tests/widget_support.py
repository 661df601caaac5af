"""Helpers for the napari widget GUI tests: sample slide, settling the event loop, compact screenshots."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data" / "synthetic_slide.tiff"
#: Screenshots go to a temp folder; `PROTOSEG_SCREENSHOTS=docs/images make test` refreshes the README's.
DOC_IMAGES = Path(os.environ.get("PROTOSEG_SCREENSHOTS") or Path(tempfile.gettempdir()) / "protoseg-screenshots")


def settle(seconds: float = 0.5) -> None:
    """Process Qt events for a while so napari draws (async slicing, GL canvas)."""
    from qtpy.QtWidgets import QApplication

    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        QApplication.processEvents()
        time.sleep(0.02)


def open_sample(viewer):
    """The sample slide (mpp 0.5) through the protoseg reader."""
    layer = viewer.open(str(SAMPLE), plugin="protoseg")[0]
    viewer.window.resize(1280, 860)
    viewer.reset_view()
    return layer


def widget_screenshot(viewer, name: str, max_width: int = 960) -> np.ndarray:
    """Whole-window screenshot (canvas + docked widgets) saved small as DOC_IMAGES/widget_<name>.jpg."""
    from PIL import Image

    from protoseg.napari.refresh import wait_slide_layers

    assert wait_slide_layers(viewer, timeout=30.0), "slide layers still loading after 30 s"
    settle(1.0)
    img = np.asarray(viewer.screenshot(canvas_only=False, flash=False))[..., :3]
    pil = Image.fromarray(np.ascontiguousarray(img))
    if pil.width > max_width:
        pil = pil.resize((max_width, round(pil.height * max_width / pil.width)), Image.Resampling.LANCZOS)
    DOC_IMAGES.mkdir(parents=True, exist_ok=True)
    path = DOC_IMAGES / f"widget_{name}.jpg"
    pil.save(path, quality=80, optimize=True)
    assert path.stat().st_size < 200_000, f"{path} is {path.stat().st_size} bytes; keep doc images small"
    return img


class Heartbeat:
    """A 10 ms QTimer on the GUI thread: ``longest_ms`` is the longest gap between beats (how long the GUI
    thread was blocked) since ``reset()``; ``measure(name)`` records it per widget action in ``STALLS``."""

    def __init__(self) -> None:
        from qtpy.QtCore import QTimer

        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self._beat)
        self._last = time.perf_counter()
        self.longest_ms = 0.0
        self._timer.start()

    def _beat(self) -> None:
        now = time.perf_counter()
        self.longest_ms = max(self.longest_ms, 1000 * (now - self._last))
        self._last = now

    def reset(self) -> None:
        from qtpy.QtWidgets import QApplication

        QApplication.processEvents()
        self._last, self.longest_ms = time.perf_counter(), 0.0

    def stop(self) -> None:
        self._timer.stop()


#: Longest GUI-thread stall (ms) per widget action, filled by the GUI tests (printed with -s, in the report).
STALLS: dict[str, float] = {}


def record_stall(name: str, beat: Heartbeat) -> float:
    """Store (and return) the longest stall seen by ``beat`` for the action ``name``."""
    STALLS[name] = round(beat.longest_ms, 1)
    print(f"GUI stall {name}: {STALLS[name]:.0f} ms")
    return beat.longest_ms
