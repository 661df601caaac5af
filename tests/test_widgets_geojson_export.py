"""Predict dock, Export › GeoJSON (issue 20 item 5): the save dialog's file type picks QuPath annotations or
detections; the written objects carry measurements and ids. Opened through napari's plugin entry point."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui


@pytest.mark.parametrize("chosen", ["QuPath annotations (*.geojson)", "QuPath detections (*.geojson)"])
def test_geojson_export_writes_the_object_type_chosen_in_the_save_dialog(
    make_napari_viewer, qtbot, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, chosen: str
) -> None:
    from qtpy.QtWidgets import QFileDialog

    from protoseg.export import ExportFormat
    from test_export import _finished_prediction

    pred = _finished_prediction(tmp_path / "s.zarr")
    out = tmp_path / "objects.geojson"
    offered: list[str] = []

    def save_dialog(parent, caption, directory, filters):  # what the user picks in the dialog
        offered.append(filters)
        return str(out), chosen

    monkeypatch.setattr(QFileDialog, "getSaveFileName", save_dialog)
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Predict")
    widget.out.setText(str(pred))  # the whole-slide output the exports read
    widget.export_btns[ExportFormat.GEOJSON].click()
    qtbot.waitUntil(lambda: widget.status.text().startswith("wrote"), timeout=30_000)
    assert offered == ["QuPath annotations (*.geojson);;QuPath detections (*.geojson)"]
    feats = json.loads(out.read_text())["features"]
    kind = "detection" if "detections" in chosen else "annotation"
    assert feats and {f["properties"]["objectType"] for f in feats} == {kind}
    assert all(f["id"] and "Area µm^2" in f["properties"]["measurements"] for f in feats)
