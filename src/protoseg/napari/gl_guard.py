"""Guard against a napari/vispy crash: removing several layers in one event-loop turn, then drawing or adding
new ones, can make the next draw read freed GL state (segfault in ``glDrawArrays`` with Mesa's software GL; an
"access violation" on Windows: napari issues #6472, #7345, #8471, PR #8122). After each removal the removed
visuals are garbage-collected (their GL objects are deleted in order) and the canvas repaints synchronously,
so GL state is consistent before anything else happens; protoseg's docks install this once per viewer.
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

_MARK = "_protoseg_removal_repaint"


def install_removal_repaint(viewer: Any) -> bool:
    """Collect and repaint ``viewer``'s canvas after every image or labels layer removal (user or code);
    idempotent.
    Returns True when installed now, False when already installed or the viewer has no Qt canvas."""
    if getattr(viewer, _MARK, False):
        return False
    qt_viewer = getattr(getattr(viewer, "window", None), "_qt_viewer", None)
    native = getattr(getattr(qt_viewer, "canvas", None), "native", None)
    if native is None or not hasattr(native, "repaint"):
        return False

    def settle_gl(event: Any = None) -> None:
        if getattr(getattr(event, "value", None), "_type_string", "image") not in ("image", "labels"):
            return  # the crash was reproduced with image and labels layers only: others skip the cost
        start = time.perf_counter()
        gc.collect()  # a partial (generation 0/1) collection was not enough in tests
        try:
            native.repaint()
        except RuntimeError:  # the canvas is being destroyed with its window
            logger.debug("canvas gone: no repaint after layer removal")
        logger.debug("layer removal: GL settled in %.0f ms", 1000 * (time.perf_counter() - start))

    viewer.layers.events.removed.connect(settle_gl)
    object.__setattr__(viewer, _MARK, True)
    return True
