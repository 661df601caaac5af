"""napari layers and canvas decorations of computed overlays: read-only mask layers, layer creation from
overlay layer data, adding layers one per event-loop turn, the class legend on the canvas and a layer's units."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from napari.layers import Labels
from qtpy.QtCore import QTimer

from protoseg.classes import ClassSpec

logger = logging.getLogger(__name__)


def make_read_only(layer: Any) -> Any:
    """Keep a computed overlay Labels layer read-only (no paint tools; painting would edit a model output).

    Before the layer is added this also hides its paint-brush and polygon overlays, which a read-only layer
    never shows: napari then does not build their GL visuals (most of the GUI time of adding a Labels layer).
    """
    for key in ("polygon", "brush_stroke"):
        overlay = getattr(layer, "_overlays", {}).get(key)
        if overlay is not None:
            overlay.visible = False
    layer.editable = False
    layer.events.editable.connect(lambda _e=None: setattr(layer, "editable", False) if layer.editable else None)
    return layer


def create_overlay_layer(layer_data: Any) -> Any:
    """A napari layer from overlay layer data; the mask Labels layer is made read-only before it is added."""
    from napari.layers import Layer

    layer = Layer.create(*layer_data)
    return make_read_only(layer) if isinstance(layer, Labels) else layer


#: Delay between two GUI steps (ms). Positive on purpose: Qt runs zero-delay timers queued by one another
#: back to back, before other timers and input, so a 0 ms chain is one long stall; 1 ms lets them run between.
STEP_MS = 1


def run_in_turns(steps: Sequence[Callable[[], Any]], delay_ms: int = STEP_MS) -> None:
    """Run ``steps`` in order, one per event-loop turn, so the viewer paints and answers input between them.
    A step that raises is logged and the sequence goes on (its last step usually ends a busy state)."""
    todo = list(steps)

    def step() -> None:
        try:
            todo.pop(0)()
        except Exception:
            logger.exception("overlay step failed")
        if todo:
            QTimer.singleShot(delay_ms, step)

    if todo:
        QTimer.singleShot(delay_ms, step)


def add_layer_quietly(viewer: Any, layer: Any) -> Any:
    """Add ``layer`` and give the selection back to the layers selected before (overlays leave the slide layer
    the active one, so its controls stay in the layer-controls panel). Public napari API only."""
    selection = viewer.layers.selection
    before, active = list(selection), selection.active
    added = viewer.add_layer(layer)
    if active is not None:
        selection.clear()
        selection.update(before)
        selection.active = active
    return added


def add_layers_in_turns(
    viewer: Any,
    data: Sequence[Any],
    added: list[Any],
    done: Callable[[], Any],
    stale: Callable[[], bool] = lambda: False,
) -> None:
    """Build and add overlay layers from layer data, one step per event-loop turn, then call ``done``; once
    ``stale()`` is true (the overlays were cleared meanwhile) the remaining steps do nothing but ``done``.

    Each layer takes three turns: napari builds it; adds it hidden (GL visual and layer controls: the
    costliest step, made without activating it, see :func:`add_layer_quietly`); then shows it (first
    slice, texture upload). Layers are appended to ``added`` as they join the viewer.
    """
    built: list[tuple[Any, bool]] = []

    def build(ld: Any) -> None:
        if stale():
            return
        built.append((create_overlay_layer((ld[0], {**ld[1], "visible": False}, ld[2])), ld[1].get("visible", True)))

    def add() -> None:
        if not stale() and built:
            added.append(add_layer_quietly(viewer, built[-1][0]))

    def show() -> None:
        if built:
            layer, visible = built.pop()
            if not stale():
                layer.visible = visible

    run_in_turns([*(step for ld in data for step in (lambda ld=ld: build(ld), add, show)), done])


LEGEND_KEY = "protoseg_legend_"


def _legend_entries(classes: ClassSpec) -> list[tuple[str, list[float]]]:
    return [(f"■ {name}", [v / 255 for v in rgb] + [1.0]) for name, rgb in zip(classes.names, classes.colors)]


def canvas_legend(viewer: Any) -> list[Any]:
    """The legend's text overlays on the canvas, in class order."""
    found = {k: o for k, o in viewer.canvas.overlays.items() if str(k).startswith(LEGEND_KEY)}
    return [found[k] for k in sorted(found, key=lambda k: int(str(k)[len(LEGEND_KEY) :]))]


def add_canvas_legend(viewer: Any, classes: ClassSpec, staggered: bool = False) -> list[Any]:
    """Class names in their colours in the canvas's top-right corner (one napari text overlay per class), so
    a screenshot of the canvas can be read. A legend already showing these classes is kept (napari builds
    a GL text visual for each text: costly); another one is replaced. ``staggered`` spreads the work over
    event-loop turns: one text overlay per turn."""
    from napari.components.overlays import TextOverlay

    entries = _legend_entries(classes)
    shown = canvas_legend(viewer)
    if len(shown) == len(entries) and all(
        o.text == t and np.allclose(o.color, c, atol=1e-3) for o, (t, c) in zip(shown, entries)
    ):
        for overlay in shown:
            overlay.visible = True
        return shown
    remove_canvas_legend(viewer)
    overlays = [TextOverlay(text=t, color=c, position="top_right", font_size=11, visible=False) for t, c in entries]
    steps = []
    for i, overlay in enumerate(overlays):  # added hidden (napari builds the visual), shown a turn later (drawn)
        steps.append(lambda i=i, overlay=overlay: viewer.canvas.overlays.__setitem__(f"{LEGEND_KEY}{i}", overlay))
        steps.append(lambda overlay=overlay: setattr(overlay, "visible", True))
    if staggered:  # (pre-loading glyphs into the font atlas outside a draw crashed Mesa's GL: not done)
        run_in_turns(steps)
    else:
        for step in steps:
            step()
    return overlays


def hide_canvas_legend(viewer: Any) -> None:
    """Hide the class legend (kept for the next overlays of the same classes: no GL visuals to rebuild)."""
    for overlay in canvas_legend(viewer):
        overlay.visible = False


def remove_canvas_legend(viewer: Any) -> None:
    """Remove the class legend from the canvas."""
    for key in [k for k in viewer.canvas.overlays if str(k).startswith(LEGEND_KEY)]:
        del viewer.canvas.overlays[key]


def layer_units(layer: Any) -> Any:
    units = getattr(layer, "units", None)
    return None if units is None else tuple(str(u) for u in units)
