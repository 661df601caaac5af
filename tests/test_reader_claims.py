"""Which files protoseg's napari reader takes, napari's reader preferences (changed only by the Region tagging
dock's button, never behind the user's back) and a slide without mpp put in µm once the user gives it.

File > Open (and drag and drop) call ``viewer.open(paths, plugin=None)``: napari uses the reader the user's
preferences name for the pattern, the only reader that claims it, or else asks (its reader dialog). A plain
``viewer.open(path)`` uses napari's own reader, which is also what choosing "napari builtins" in the dialog
does. napari's settings live in a per-session temporary file (tests/conftest.py sets ``NAPARI_CONFIG``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("error:Private attribute access:FutureWarning")]

from protoseg.napari.reader import get_reader
from slide_fixtures import IMAGES, SLIDES, make_pyramid, write_images

CMU = SLIDES / "cmu-1-small-region.svs"
needs_real = pytest.mark.skipif(not CMU.is_file(), reason="real slides in ../shared/data/slides are absent")
DOCKS = ("Region tagging", "Train", "Image bank", "Predict")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    return write_images(tmp_path_factory.mktemp("images"))


def _reader_prefs() -> dict[str, str]:
    from napari.settings import get_settings

    return dict(get_settings().plugins.extension2reader)


def test_napari_settings_are_the_test_sessions_own() -> None:
    from napari.settings import get_settings

    assert "protoseg-tests-napari-" in str(get_settings().config_path)


def test_get_reader_takes_rgb_slides_and_leaves_other_images(images: dict[str, Path]) -> None:
    claimed = {name: get_reader(str(path)) is not None for name, path in images.items()}
    assert claimed == IMAGES
    assert get_reader([str(images["rgb.png"])]) is not None and get_reader([str(images["fluo.tif"])]) is None


@needs_real
def test_get_reader_takes_whole_slide_files() -> None:
    assert get_reader(str(CMU)) is not None
    assert get_reader(str(SLIDES / "OS-1-detail.ome.tif")) is not None


def test_docks_and_sample_leave_reader_preferences_alone(make_napari_viewer) -> None:
    from napari.settings import get_settings

    get_settings().plugins.extension2reader = {"*.czi": "someone"}
    viewer = make_napari_viewer()
    for name in DOCKS:
        viewer.window.add_plugin_dock_widget("protoseg", name)
    viewer.open_sample("protoseg", "synthetic_slide")
    assert _reader_prefs() == {"*.czi": "someone"}


def test_button_assigns_whole_slide_patterns_and_keeps_the_users_choices(make_napari_viewer) -> None:
    from napari.settings import get_settings

    from protoseg.napari.preferences import PATTERNS

    get_settings().plugins.extension2reader = {"*.ndpi": "napari", "*.tif": "protoseg", "*.png": "napari"}
    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Region tagging")
    assert _reader_prefs() == {"*.ndpi": "napari", "*.tif": "protoseg", "*.png": "napari"}  # opening: nothing
    widget.reader_prefs.button.click()
    prefs = _reader_prefs()
    assert prefs["*.ndpi"] == "napari" and prefs["*.png"] == "napari" and prefs["*.tif"] == "protoseg"
    assert all(prefs[p] == "protoseg" for p in PATTERNS if p != "*.ndpi")
    assert set(prefs) == {*PATTERNS, "*.tif", "*.png"}  # no *.tiff, *.jpg, *.dcm, *.zarr
    text = widget.reader_prefs.status.text()
    assert "*.svs" in text and "*.ome.tiff" in text and "*.ndpi → napari" in text
    assert "*.tif" in text.split("your preferences also open")[1]  # an earlier protoseg's claim, reported
    widget.reader_prefs.button.click()  # again: nothing new to assign
    assert _reader_prefs() == prefs and "already open with protoseg" in widget.reader_prefs.status.text()


def test_file_open_leaves_ordinary_images_to_napari(make_napari_viewer, images: dict[str, Path]) -> None:
    """After the button, File > Open still never sends a fluorescence TIFF or greyscale PNG to protoseg (napari
    asks, as for any type two readers claim); napari's reader gives its usual layers; protoseg declines them."""
    from napari.errors import MultipleReaderError, ReaderPluginError
    from napari.settings import get_settings

    viewer = make_napari_viewer()
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Region tagging")
    widget.reader_prefs.button.click()
    for name, shape in (("fluo.tif", (5, 64, 80)), ("grey.png", (300, 400))):
        path = str(images[name])
        with pytest.raises(MultipleReaderError) as asked:  # File > Open: napari's reader dialog, no error
            viewer.open(path, plugin=None)
        assert set(asked.value.available_plugins) == {"napari", "protoseg"}
        layer = viewer.open(path)[0]  # napari's own reader (the dialog's "napari builtins")
        assert "protoseg" not in layer.metadata and layer.data.shape == shape and not layer.rgb
        with pytest.raises(ValueError):  # protoseg chosen by hand: declined, not shown as an RGB "slide"
            viewer.open(path, plugin="protoseg")
    # *.tif -> protoseg, as an earlier protoseg wrote: napari's dialog with protoseg's refusal, not a bad layer
    get_settings().plugins.extension2reader = {**_reader_prefs(), "*.tif": "protoseg"}
    with pytest.raises(ReaderPluginError):
        viewer.open(str(images["fluo.tif"]), plugin=None)
    assert [ly for ly in viewer.layers if "protoseg" in ly.metadata] == []


def test_file_open_takes_rgb_images_to_protoseg_when_chosen(make_napari_viewer, images: dict[str, Path]) -> None:
    viewer = make_napari_viewer()
    for name in ("rgb.png", "tiled.tif", "pyramid.tiff"):
        layer = viewer.open(str(images[name]), plugin="protoseg")[0]
        assert layer.rgb and layer.metadata["protoseg"]["path"] == str(images[name])


@needs_real
def test_file_open_of_a_real_slide_after_the_button(make_napari_viewer) -> None:
    from napari.errors import MultipleReaderError

    viewer = make_napari_viewer()
    with pytest.raises(MultipleReaderError):  # nothing assigned behind the user's back: napari asks
        viewer.open(str(CMU), plugin=None)
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Region tagging")
    widget.reader_prefs.button.click()
    layer = viewer.open(str(CMU), plugin=None)[0]  # File > Open: protoseg, no dialog
    assert layer.metadata["protoseg"]["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert tuple(layer.scale) == pytest.approx((0.499, 0.499), abs=1e-3)
    assert tuple(str(u) for u in layer.units) == ("micrometer", "micrometer")


# ---- a slide without mpp -------------------------------------------------------------------------
def test_mpp_answer_puts_the_slide_and_its_layers_in_micrometres(make_napari_viewer, tmp_path: Path) -> None:
    from protoseg.napari.widgets import slide_info
    from protoseg.napari.widgets._common import layer_to_level0

    path, _rgb = make_pyramid(tmp_path / "nompp.tif", h=600, w=1000, mpp=None)
    slide_info._USER_MPP.clear()
    viewer = make_napari_viewer()
    slide = viewer.open(str(path), plugin="protoseg")[0]
    assert tuple(slide.scale) == (1.0, 1.0) and slide.metadata["protoseg"]["mpp"] is None
    _dock, regions_dock = viewer.window.add_plugin_dock_widget("protoseg", "Region tagging")
    _dock, predict = viewer.window.add_plugin_dock_widget("protoseg", "Predict")
    regions = regions_dock.new_regions_layer()  # drawn in slide pixels before the answer
    regions.add_polygons([np.array([[100.0, 200.0], [100.0, 400.0], [300.0, 400.0]])])
    overlay = viewer.add_labels(  # an overlay placed like Predict places one (4 slide px per pixel)
        np.zeros((150, 250), np.uint8), scale=(4.0, 4.0), translate=(1.5, 1.5), metadata={"protoseg_overlay": {}}
    )
    other = viewer.add_image(np.zeros((4, 4), np.uint8), name="elsewhere", translate=(5000, 5000))
    viewer.camera.center, viewer.camera.zoom = (200.0, 300.0), 3.0  # the user zoomed in on a detail
    verts_before = layer_to_level0(regions.data[0], regions, slide)
    centre_before = slide.world_to_data(viewer.camera.center)
    assert predict.mpp_hint.ask.isVisibleTo(predict)

    predict.mpp_hint.spin.setValue(0.25)
    predict.mpp_hint.button.click()  # the user's answer: scanned at 40x

    assert tuple(slide.scale) == (0.25, 0.25)
    assert tuple(overlay.scale) == (1.0, 1.0) and tuple(overlay.translate) == (0.375, 0.375)
    assert tuple(regions.scale) == (0.25, 0.25)
    for layer in (slide, regions, overlay):
        assert tuple(str(u) for u in layer.units) == ("micrometer", "micrometer")
    assert tuple(other.scale) == (1.0, 1.0)  # not placed on the slide: untouched
    np.testing.assert_allclose(layer_to_level0(regions.data[0], regions, slide), verts_before)
    np.testing.assert_allclose(slide.world_to_data(viewer.camera.center), centre_before, atol=1e-6)  # same view
    assert viewer.camera.zoom == pytest.approx(12.0)
    viewer.layers.remove(other)
    assert viewer.layers.extent.units is not None  # one unit for all layers: no "Inconsistent units" toast
    assert "0.25 µm/px (set by you)" in predict.mpp_hint.text() and not predict.mpp_hint.ask.isVisibleTo(predict)
    predict.slide_mpp.setValue(0.5)  # Predict's own "Slide mpp" field changes it again: all follow
    assert (
        tuple(slide.scale) == (0.5, 0.5) and tuple(overlay.scale) == (2.0, 2.0) and tuple(regions.scale) == (0.5,) * 2
    )
    np.testing.assert_allclose(layer_to_level0(regions.data[0], regions, slide), verts_before)

    viewer.layers.clear()
    again = viewer.open(str(path), plugin="protoseg")[0]  # the same slide opened again: µm at once
    assert tuple(again.scale) == (0.5, 0.5)
    assert tuple(str(u) for u in again.units) == ("micrometer", "micrometer")
    slide_info._USER_MPP.clear()
