"""The Qt side of progressive slide layers: which thread may not wait, and coalesced layer refreshes.

A :class:`LayerRefresher` receives a ``ProgressiveLoader``'s ``on_ready`` calls from its worker threads,
hops to the GUI thread through a queued signal and refreshes the napari layer(s) showing the loader's
arrays at most once per ``interval_ms``; when such a layer is removed from its viewer the loader is closed.
"""

from __future__ import annotations

import logging
import time
import weakref
from typing import TYPE_CHECKING, Any

from qtpy.QtCore import QCoreApplication, QObject, QThread, QTimer, Signal

if TYPE_CHECKING:
    from protoseg.napari.progressive import ProgressiveLoader

logger = logging.getLogger(__name__)

#: how often (ms) a slide layer may be refreshed while chunks arrive
REFRESH_MS = 50
#: longest wait (ms) between looks for a layer not yet in a viewer (the looks never stop while chunks arrive)
FIND_MAX_MS = 2000


def on_gui_thread() -> bool:
    """True on the thread of a running Q(Core)Application (the one that must never wait for pixels)."""
    app = QCoreApplication.instance()
    return app is not None and QThread.currentThread() is app.thread()


def _current_viewer() -> Any | None:
    """napari's current viewer (public API), or None."""
    import napari

    return napari.current_viewer()


class _Bridge(QObject):
    ready = Signal()


class LayerRefresher:
    """Refreshes, on the GUI thread and at most every ``interval_ms``, the layers that show ``loader``'s arrays."""

    def __init__(self, interval_ms: int = REFRESH_MS) -> None:
        self.loader: ProgressiveLoader | None = None
        self.refreshes = 0
        self._layers: list[weakref.ref[Any]] = []
        self._viewers: list[weakref.ref[Any]] = []
        self._misses = 0
        self._overview_fresh = False
        self._interval = int(interval_ms)
        self._bridge = _Bridge()
        self._timer = QTimer(self._bridge)
        self._timer.setSingleShot(True)
        self._timer.setInterval(self._interval)
        self._timer.timeout.connect(self._refresh)
        self._bridge.ready.connect(self._schedule)  # emitted from worker threads: a queued connection

    def attach(self, loader: ProgressiveLoader, viewer: Any | None = None) -> None:
        """Refresh for ``loader`` (whose ``on_ready`` should be :meth:`notify`). The layer is found when
        ``viewer`` (default: napari's current viewer, the one File > Open reads into) inserts it."""
        self.loader = loader
        viewer = viewer if viewer is not None else _current_viewer()
        if viewer is not None:
            self._watch(viewer)

    def _watch(self, viewer: Any) -> None:
        """Follow ``viewer``'s layer insertions and removals (once per viewer)."""
        if any(ref() is viewer for ref in self._viewers):
            return
        self._viewers.append(weakref.ref(viewer))
        viewer.layers.events.inserted.connect(self._on_inserted)
        viewer.layers.events.removed.connect(self._on_removed)

    def _on_inserted(self, event: Any) -> None:
        layer = getattr(event, "value", None)
        if self.loader is None or layer is None or not _holds(layer, {id(a) for a in self.loader.arrays}):
            return
        if all(ref() is not layer for ref in self._layers):
            self._layers.append(weakref.ref(layer))
        self._misses = 0
        self._schedule()  # chunks may have arrived before napari inserted the layer

    def notify(self) -> None:
        """Thread-safe: chunks arrived; a refresh follows on the GUI thread."""
        try:
            self._bridge.ready.emit()
        except RuntimeError:  # the Qt object is gone (application shutting down)
            pass

    def _schedule(self) -> None:
        if not self._timer.isActive():
            self._timer.start(self._interval)

    def layers(self) -> list[Any]:
        """The layers (in the watched viewers, or napari's current one) whose data hold this loader's arrays."""
        alive = [layer for ref in self._layers if (layer := ref()) is not None]
        if alive or self.loader is None:
            return alive
        mine = {id(a) for a in self.loader.arrays}
        viewers = [v for ref in self._viewers if (v := ref()) is not None]
        current = _current_viewer()
        if current is not None and all(current is not v for v in viewers):
            viewers.append(current)
        for viewer in viewers:
            hits = [ly for ly in viewer.layers if _holds(ly, mine)]
            if hits:
                self._layers.extend(weakref.ref(ly) for ly in hits)
                self._watch(viewer)
                alive.extend(hits)
        return alive

    def _refresh(self) -> None:
        loader = self.loader
        if loader is None or loader.closed:
            return
        layers = self.layers()
        if not layers:  # not inserted yet: look again, less and less often but never giving up
            self._misses += 1
            self._timer.start(min(FIND_MAX_MS, self._interval * 2 ** min(self._misses, 6)))
            return
        if not self._overview_fresh and loader.coarsest_complete():
            # napari (0.9) reads the coarsest level of a 2-D multiscale layer once per ``data`` and keeps it
            # (its overview and thumbnail): hand it the same arrays again once that level is loaded, or the
            # overview keeps the placeholders it first read.
            self._overview_fresh = True
            for layer in layers:
                if getattr(layer, "multiscale", False):
                    layer.data = list(layer.data)
        for layer in layers:
            layer.refresh(extent=False, highlight=False)
        self.refreshes += 1

    def _on_removed(self, event: Any) -> None:
        gone = event.value
        was_mine = any(ref() is gone for ref in self._layers)
        self._layers = [ref for ref in self._layers if (ly := ref()) is not None and ly is not gone]
        if not was_mine or self._layers or self.loader is None:
            return
        logger.debug("slide layer removed: stopping its loader")
        self.loader.close()
        self._timer.stop()
        for ref in self._viewers:
            viewer = ref()
            if viewer is not None:
                for emitter, slot in (
                    (viewer.layers.events.inserted, self._on_inserted),
                    (viewer.layers.events.removed, self._on_removed),
                ):
                    try:
                        emitter.disconnect(slot)
                    except (RuntimeError, ValueError):  # already gone with its viewer
                        pass
        self._viewers = []


def slide_loaders(viewer: Any) -> list[ProgressiveLoader]:
    """The loaders behind ``viewer``'s progressive slide layers (one per layer, open ones only)."""
    out: list[ProgressiveLoader] = []
    for layer in viewer.layers:
        data = getattr(layer, "data", None)
        first = data[0] if getattr(layer, "multiscale", False) and data is not None else data
        loader = getattr(first, "loader", None)
        if loader is not None and hasattr(loader, "wait_idle") and not loader.closed:
            out.append(loader)
    return out


def wait_slide_layers(viewer: Any, timeout: float = 30.0) -> bool:
    """Process Qt events until every slide layer of ``viewer`` has loaded the chunks asked so far and been
    refreshed (screenshots, tests); False on timeout. Never blocks the event loop."""
    end = time.monotonic() + timeout
    loaders = slide_loaders(viewer)
    quiet_since: float | None = None
    while time.monotonic() < end:
        QCoreApplication.processEvents()
        now = time.monotonic()
        if not all(loader.wait_idle(0) for loader in loaders):
            quiet_since = None
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since > 3 * REFRESH_MS / 1000:  # idle through the coalesced refresh and its redraw
            return True
        time.sleep(0.01)
    return False


def _holds(layer: Any, ids: set[int]) -> bool:
    """Whether ``layer``'s data (one array or a multiscale list) includes an array whose id is in ``ids``."""
    data = getattr(layer, "data", None)
    if data is None:
        return False
    if id(data) in ids:
        return True
    if getattr(layer, "multiscale", False):
        return any(id(d) in ids for d in data)
    return False
