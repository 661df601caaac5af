"""Every dock fits a 1366x768 laptop window: its minimum height is small (the contents scroll), and the
buttons at the bottom (Start, progress, Export) can be scrolled into view."""

from __future__ import annotations

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

import timm  # noqa: F401  - load torch/timm native libs before Qt

from widget_support import open_sample, settle, widget_screenshot

DOCKS = {
    "Region tagging": ("protoseg.napari.widgets.regions", "RegionTagWidget"),
    "Train": ("protoseg.napari.widgets.train", "TrainWidget"),
    "Image bank": ("protoseg.napari.widgets.bank", "BankWidget"),
    "Predict": ("protoseg.napari.widgets.predict", "PredictWidget"),
}


def test_every_dock_fits_a_laptop_screen(make_napari_viewer) -> None:
    import importlib

    from qtpy.QtWidgets import QScrollArea

    from protoseg.napari.widgets._common import MAX_DOCK_MIN_HEIGHT

    viewer = make_napari_viewer(show=True)
    open_sample(viewer)
    viewer.window.resize(1366, 768)
    widgets = {}
    for name, (module, cls) in DOCKS.items():
        widget = getattr(importlib.import_module(module), cls)(viewer)
        viewer.window.add_dock_widget(widget, name=name, area="right", tabify=bool(widgets))
        widgets[name] = widget
    settle(0.5)
    heights, content = {}, {}
    for name, widget in widgets.items():
        dock = viewer.window.dock_widgets[name].parent()
        heights[name] = max(widget.minimumSizeHint().height(), dock.minimumSizeHint().height())
        area = widget.findChild(QScrollArea)
        assert area is not None, f"{name} dock does not scroll"
        content[name] = area.widget().sizeHint().height()
    print("dock minimum heights (px):", heights, "contents (scrolled):", content)
    assert all(h <= MAX_DOCK_MIN_HEIGHT for h in heights.values()), heights
    assert viewer.window.geometry()[3] <= 768
    for name in DOCKS:  # each dock on top in turn; the last one (Predict) is photographed for the README
        viewer.window.dock_widgets[name].parent().raise_()
        settle(0.2)
    widget_screenshot(viewer, "laptop_1366x768")
