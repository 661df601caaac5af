"""Guard against a napari/vispy crash after removing protoseg's own layers (segfault in ``glDrawArrays`` with
Mesa's software GL; an "access violation" on Windows: napari issues #6472, #7345, #8471, PR #8122).

Removing several image/labels layers in one event-loop turn leaves their vispy visuals in reference cycles;
when a later, arbitrary garbage collection frees them, their GL objects are deleted in the middle of another
draw. The guard frees them at a safe moment instead: right after each removal of one of protoseg's own layers
(slides it opened, overlays it made) it runs a garbage collection and repaints the canvas synchronously
(deferring it to the end of the event-loop turn, once for several removals, still crashed).

Narrow and cheap by design: the user's own layers are not touched, and objects alive when the first dock
opens (napari, Qt, the user's data) are moved to the permanent generation (``gc.freeze``), so a full
collection scans only what was created since (0-20 ms instead of 0.2-0.8 s with napari + torch loaded).
The price: cyclic garbage among those older objects is never collected (memory, not a crash), the
trade-off CPython documents for ``gc.freeze``. State lives on the guard (one per dock), never on napari's
objects; the canvas is found through Qt, not napari internals.
"""

from __future__ import annotations

import gc
import logging
import time
import weakref
from typing import Any

from qtpy.QtWidgets import QWidget

logger = logging.getLogger(__name__)

_state = {"frozen": False}


def is_protoseg_layer(layer: Any) -> bool:
    """Whether ``layer`` is one of protoseg's: a slide its reader opened or an overlay a dock made."""
    meta = getattr(layer, "metadata", None)
    return isinstance(meta, dict) and ("protoseg" in meta or "protoseg_overlay" in meta)


def _is_image_or_labels(layer: Any) -> bool:
    from napari.layers import Image, Labels

    return isinstance(layer, Image | Labels)


def _canvases(widget: QWidget | None) -> list[Any]:
    """The GL canvases (vispy's ``QOpenGLWidget``) of the window ``widget`` is docked in."""
    if widget is None:
        return []
    try:
        from qtpy.QtOpenGLWidgets import QOpenGLWidget
    except ImportError:  # Qt5 bindings
        from qtpy.QtWidgets import QOpenGLWidget
    try:
        return list(widget.window().findChildren(QOpenGLWidget))
    except RuntimeError:  # the widget is being deleted
        return []


class RemovalGuard:
    """Owned by one dock: after protoseg's image/labels layers leave ``viewer``, settle GL once per turn."""

    def __init__(self, viewer: Any, widget: QWidget) -> None:
        self._widget = weakref.ref(widget)
        self.settled = 0
        if not _state["frozen"]:
            gc.freeze()
            _state["frozen"] = True
        viewer.layers.events.removed.connect(self._on_removed)  # napari holds bound methods weakly

    def _on_removed(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if layer is not None and is_protoseg_layer(layer) and _is_image_or_labels(layer):
            self._settle()  # at once: the next removal of the same turn must find GL state consistent

    def _settle(self) -> None:
        start = time.perf_counter()
        gc.collect()
        for canvas in _canvases(self._widget()):
            try:
                canvas.repaint()
            except RuntimeError:  # the canvas is being destroyed with its window
                logger.debug("canvas gone: no repaint after layer removal")
        self.settled += 1
        logger.debug("protoseg layers removed: GL settled in %.0f ms", 1000 * (time.perf_counter() - start))
