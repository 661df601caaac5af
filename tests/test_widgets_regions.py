"""Region tagging widget driven like a user: draw polygons over the sample slide, tick classes, save and
reload GeoJSON, and turn the tags into training patches."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from protoseg.config import ProtosegConfig
from protoseg.train.jobs import source_data
from widget_support import open_sample, widget_screenshot

# two squares in world units (µm; the sample slide is 0.5 µm/px): 300 µm = 600 level-0 px each
SQUARE_A = np.array([[100.0, 200.0], [100.0, 500.0], [400.0, 500.0], [400.0, 200.0]])  # (row, col) µm
SQUARE_B = np.array([[600.0, 1000.0], [600.0, 1300.0], [900.0, 1300.0], [900.0, 1000.0]])


def _tick(widget, qtbot, layer, index: int, names: list[str]) -> None:
    layer.selected_data = {index}
    for name in names:
        widget.checks[name].click()


def test_tag_save_reload_and_training_patches(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    from protoseg.napari.widgets import _common
    from protoseg.napari.widgets._common import region_sources
    from protoseg.napari.widgets.regions import RegionTagWidget

    viewer = make_napari_viewer(show=True)
    slide = open_sample(viewer)
    widget = RegionTagWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Region tagging", area="right")
    assert widget.slide_combo.layer() is slide
    assert widget.mpp_spin.value() == pytest.approx(0.5)

    widget.new_btn.click()
    layer = viewer.layers[f"{slide.name} regions"]
    assert widget.shapes_combo.layer() is layer
    layer.add_polygons([SQUARE_A, SQUARE_B])
    _tick(widget, qtbot, layer, 0, ["TUM", "LYM"])
    _tick(widget, qtbot, layer, 1, ["STR"])

    # tags stored as features: a "TUM;LYM" string plus one boolean column per class
    assert list(layer.features["classes"]) == ["TUM;LYM", "STR"]
    assert list(layer.features["TUM"]) == [True, False]
    assert list(layer.features["STR"]) == [False, True]
    assert list(layer.features["LYM"]) == [True, False]
    assert list(layer.features["NEC"]) == [False, False]
    # shapes show their tags: edge colour of the first tag's class, text = tags
    np.testing.assert_allclose(layer.edge_color[0], [1, 0, 0, 1])
    np.testing.assert_allclose(layer.edge_color[1], [0, 1, 0, 1])
    assert list(layer.text.values) == ["TUM;LYM", "STR"]
    # selecting a shape shows its tags; unticking removes one
    layer.selected_data = {0}
    assert [n for n, b in widget.checks.items() if b.isChecked()] == ["TUM", "LYM"]
    widget.checks["LYM"].click()
    assert layer.features["classes"][0] == "TUM"
    widget.checks["LYM"].click()
    assert layer.features["classes"][0] == "TUM;LYM"

    # level-0 (x, y) pixels = world (row, col) / mpp, swapped
    regions = widget.regions()
    np.testing.assert_allclose(regions[0].polygon, SQUARE_A[:, ::-1] / 0.5)
    assert regions[0].classes == ("TUM", "LYM") and regions[1].classes == ("STR",)

    # save GeoJSON (QuPath style) and reload it into a fresh regions layer
    path = tmp_path / "regions.geojson"
    widget.geojson.setText(str(path))
    widget.save_btn.click()
    saved = json.loads(path.read_text())
    assert [f["properties"]["classification"]["names"] for f in saved["features"]] == [["TUM", "LYM"], ["STR"]]
    assert saved["features"][1]["geometry"]["coordinates"][0][0] == [2000.0, 1200.0]

    widget.new_btn.click()
    reloaded = widget.shapes_combo.layer()
    assert reloaded is not layer and len(reloaded.data) == 0
    widget.load_btn.click()
    assert len(reloaded.data) == 2
    assert list(reloaded.features["classes"]) == ["TUM;LYM", "STR"]
    for a, b in zip(reloaded.data, layer.data):
        np.testing.assert_allclose(a, b, atol=1e-6)

    # use as training data: 600 px squares at 224 px patches (0.5 µm/px on a 0.5 µm/px slide), half-patch
    # stride (dense tiling) -> 4x4 each
    _common.set_training_patch(224)  # the Train dock's default (another test's dock may have set another)
    widget.use_btn.click()
    assert "32 patches of 224 px at 0.5 µm/px" in widget.status.text(), widget.status.text()
    source = region_sources()[reloaded.name]
    cfg = ProtosegConfig()
    data = source_data(replace(cfg, data=replace(cfg.data, patch_size=100)), source, augment=False)
    # 600 px side, 100 px patches every 50 px -> 11 x 11 per square, labels = the tags of the square they lie in
    assert len(data.train) == 242
    labels = data.train.labels()
    boxes = np.array([p.box for p in data.train.patches])
    in_a = boxes[:, 0] < 1500
    np.testing.assert_array_equal(labels[in_a], np.tile([1, 0, 1, 0], (121, 1)))
    np.testing.assert_array_equal(labels[~in_a], np.tile([0, 1, 0, 0], (121, 1)))
    patch = data.train[0]["image"]
    assert tuple(patch.shape) == (3, 100, 100) and float(patch.std()) > 0.01

    viewer.layers.selection.active = reloaded
    reloaded.selected_data = {0}
    viewer.camera.center, viewer.camera.zoom = (500.0, 750.0), 0.35
    img = widget_screenshot(viewer, "regions")
    assert img.std() > 10


def test_classes_from_text_and_untagged_errors(make_napari_viewer) -> None:
    from protoseg.napari.widgets.regions import RegionTagWidget

    viewer = make_napari_viewer()
    widget = RegionTagWidget(viewer)
    widget.classes_edit.setText("TE, NEC, LYM, TAS, FAT")
    widget.set_classes_btn.click()
    assert list(widget.checks) == ["TE", "NEC", "LYM", "TAS", "FAT"]
    assert widget.classes.colors[0] == (205, 51, 51)  # known LUAD-HistoSeg colour kept
    widget.use_btn.click()  # no slide open: a clear message, no exception
    assert "open a slide" in widget.status.text()
