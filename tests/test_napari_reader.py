"""napari plugin: manifest, reader on real and generated slides, sample data, rendered screenshot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")

from protoseg.napari.reader import get_reader

SLIDES = Path(__file__).resolve().parents[2] / "shared" / "data" / "slides"
TCGA = SLIDES / "tcga-cr-7395-01a-01-ts1.svs"
CMU = SLIDES / "cmu-1-small-region.svs"
SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "synthetic_slide.tiff"
needs_real = pytest.mark.skipif(not TCGA.is_file(), reason="real slides in ../shared/data/slides are absent")


def test_manifest_is_valid_and_lists_contributions() -> None:
    import npe2

    pm = npe2.PluginManager.instance()
    pm.discover()
    manifest = pm.get_manifest("protoseg")
    patterns = {p for r in manifest.contributions.readers for p in r.filename_patterns}
    for ext in ("svs", "tif", "tiff", "ndpi", "mrxs", "scn", "bif", "vms", "vmu", "svslide", "ome.tif", "png", "jpg"):
        assert f"*.{ext}" in patterns
    assert [s.key for s in manifest.contributions.sample_data] == ["synthetic_slide"]


def test_reader_declines_what_it_cannot_read(tmp_path: Path) -> None:
    bad = tmp_path / "broken.svs"
    bad.write_bytes(np.random.default_rng(0).bytes(5000))
    assert get_reader(str(bad)) is None
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader([str(bad), str(bad)]) is None


@needs_real
def test_reader_layer_data_for_svs_with_mpp() -> None:
    reader = get_reader(str(CMU))
    assert reader is not None
    _data, kwargs, kind = reader(str(CMU))[0]
    assert kind == "image" and kwargs["rgb"]
    assert kwargs["scale"] == pytest.approx((0.499, 0.499), abs=1e-3)
    assert kwargs["units"] == ("um", "um")
    assert kwargs["metadata"]["protoseg"]["mpp"] == pytest.approx(0.499, abs=1e-3)
    assert any(k.endswith(".vendor") for k in kwargs["metadata"]["properties"])  # openslide. or tifffile. (backend)


def _settled_screenshot(viewer) -> np.ndarray:
    from protoseg.napari.demo import _settle
    from protoseg.napari.refresh import wait_slide_layers

    viewer.reset_view()
    _settle(viewer, 0.5)
    assert wait_slide_layers(viewer, 60), "slide chunks never finished loading"  # progressive slide layers
    _settle(viewer, 0.5)
    return np.asarray(viewer.screenshot(canvas_only=True, flash=False))[..., :3]


def _tissue_fraction(img: np.ndarray) -> float:
    """Pixels that are stained (not black canvas, not white glass)."""
    rgb = img.astype(int)
    sat = rgb.max(-1) - rgb.min(-1)
    return float(((sat > 25) & (rgb.max(-1) > 60)).mean())


@needs_real
def test_tcga_slide_in_napari_shows_tissue(make_napari_viewer, tmp_path: Path) -> None:
    viewer = make_napari_viewer(show=True)
    layers = viewer.open(str(TCGA), plugin="protoseg")
    layer = layers[0]
    assert layer.multiscale and len(layer.data) >= 2  # the file's 2 levels + lazily downsampled ones (slide.pyramid)
    assert max(layer.data[-1].shape[:2]) <= 1024  # zoomed out, napari reads about one screen of pixels
    assert layer.data[0].shape == (3567, 4443, 3)
    assert tuple(layer.scale) == (1.0, 1.0)  # no mpp in this slide: pixel units
    assert layer.metadata["protoseg"]["mpp"] is None
    img = _settled_screenshot(viewer)
    from PIL import Image

    Image.fromarray(img).save(tmp_path / "tcga.png")
    assert img.std() > 10, "canvas is blank"
    assert _tissue_fraction(img) > 0.05, "no stained tissue visible"


def test_sample_data_opens_with_micrometre_scale(make_napari_viewer) -> None:
    viewer = make_napari_viewer(show=True)
    layers = viewer.open_sample("protoseg", "synthetic_slide")
    layer = layers[0]
    assert layer.multiscale and len(layer.data) >= 3
    assert tuple(layer.scale) == pytest.approx((0.5, 0.5))
    img = _settled_screenshot(viewer)
    assert _tissue_fraction(img) > 0.2
    assert SAMPLE.is_file()


@needs_real
def test_prediction_omezarr_of_tcga_opens_in_napari(make_napari_viewer, tmp_path: Path) -> None:
    """`predict` output for the real TCGA slide (mpp given by the user) opens over the slide."""
    import torch

    from protoseg.classes import BCSS_WSSS
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.predictor import Predictor

    class Redness(torch.nn.Module):
        """Stand-in model: class 0 where the tissue is pink, background elsewhere."""

        def predict(self, x: torch.Tensor) -> torch.Tensor:
            pink = (x[:, :1] - x[:, 1:2]).clamp(0, 1) * 4
            other = torch.zeros_like(pink).repeat(1, 3, 1, 1)
            return torch.cat([pink.clamp(0, 1), other, 1 - pink.clamp(0, 1)], 1)

    pred = Predictor(Redness(), classes=BCSS_WSSS, mpp=16.0, tile_size=64, overlap=8, batch_size=16)
    out = tmp_path / "tcga.zarr"
    predict_slide_to_omezarr(pred, str(TCGA), out, slide_mpp=0.5, chunk=128)
    assert get_reader(str(out)) is not None
    viewer = make_napari_viewer(show=True)
    slide_layer = viewer.open(str(TCGA), plugin="protoseg")[0]
    layers = viewer.open(str(out), plugin="protoseg")
    kinds = sorted(ly._type_string for ly in layers)
    assert kinds == ["image"] * 4 + ["labels"]
    mask = next(ly for ly in layers if ly._type_string == "labels")
    assert mask.multiscale
    # the mask covers the slide: same world extent within one prediction pixel (32 slide px)
    ext_slide = np.asarray(slide_layer.extent.world)[:, -2:]
    ext_mask = np.asarray(mask.extent.world)[:, -2:]
    assert np.allclose(ext_slide, ext_mask, atol=32)
    img = _settled_screenshot(viewer)
    assert img.std() > 10


def test_docks_explain_layers_another_reader_opened(make_napari_viewer) -> None:
    """A dock leaves napari's reader preferences alone; it explains a layer it cannot use and reopens it with
    protoseg in one click."""
    from napari.settings import get_settings

    from protoseg.napari.widgets.predict import PredictWidget
    from protoseg.napari.widgets.slide_info import foreign_image_layers

    settings = get_settings().plugins
    settings.extension2reader = {"*.jpg": "napari"}  # the user's own choice for one pattern
    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((8, 8, 3), np.uint8), name="pasted", rgb=True)  # not a protoseg slide
    widget = PredictWidget(viewer)
    assert settings.extension2reader == {"*.jpg": "napari"}
    assert foreign_image_layers(viewer) == [image]
    assert "not opened by protoseg" in widget.mpp_hint.text()
    builtin = viewer.open(str(SAMPLE))[0]  # viewer.open's default plugin is napari's built-in reader
    assert "protoseg" not in builtin.metadata and widget.mpp_hint.reopen.isVisibleTo(widget)
    viewer.layers.remove(image)
    assert "'synthetic_slide' was not opened by protoseg" in widget.mpp_hint.text()
    widget.mpp_hint.reopen.click()  # one click: the same file as a lazy protoseg slide layer in µm
    assert builtin not in viewer.layers and widget.slide.layer() is not None
    assert "0.5 µm/px" in widget.mpp_hint.text() and not widget.mpp_hint.reopen.isVisibleTo(widget)
