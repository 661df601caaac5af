"""napari layers and canvas decorations of computed overlays: read-only mask layers, layer creation from
overlay layer data, the class legend on the canvas and a layer's units."""

from __future__ import annotations

from typing import Any

from qtpy.QtCore import QTimer

from protoseg.classes import ClassSpec


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
    return make_read_only(layer) if layer._type_string == "labels" else layer


LEGEND_KEY = "protoseg_legend_"


def add_canvas_legend(viewer: Any, classes: ClassSpec, staggered: bool = False) -> list[Any]:
    """Class names in their colours in the canvas's top-right corner (one napari text overlay per class), so
    a screenshot of the canvas can be read; replaces an earlier legend. ``staggered`` adds one text per
    event-loop turn (napari builds a GL text visual for each)."""
    from napari.components.overlays import TextOverlay

    remove_canvas_legend(viewer)
    overlays = [
        TextOverlay(
            text=f"■ {name}", color=[v / 255 for v in rgb] + [1.0], position="top_right", font_size=11, visible=True
        )
        for name, rgb in zip(classes.names, classes.colors)
    ]
    todo = list(enumerate(overlays))

    def step() -> None:
        i, overlay = todo.pop(0)
        viewer.canvas.overlays[f"{LEGEND_KEY}{i}"] = overlay
        if todo and staggered:
            QTimer.singleShot(0, step)

    while todo and not staggered:
        step()
    if staggered and todo:
        QTimer.singleShot(0, step)
    return overlays


def remove_canvas_legend(viewer: Any) -> None:
    for key in [k for k in viewer.canvas.overlays if str(k).startswith(LEGEND_KEY)]:
        del viewer.canvas.overlays[key]


def layer_units(layer: Any) -> Any:
    units = getattr(layer, "units", None)
    return None if units is None else tuple(str(u) for u in units)
