"""open_slide backends on the real slides, metadata, associated images and error classification."""

from __future__ import annotations

import numpy as np
import pytest

from protoseg.errors import ProtosegError
from protoseg.slide import (
    SUPPORTED_EXTENSIONS,
    Backend,
    CorruptSlideError,
    MissingMppError,
    SlideNotFoundError,
    SlideRequestError,
    UnsupportedSlideError,
    open_slide,
)
from slide_fixtures import make_pyramid, real_slide


@pytest.mark.parametrize("kind", [None, Backend.OPENSLIDE])
def test_cmu_svs_metadata_and_associated(kind) -> None:
    # JPEG SVS: the direct tifffile reader by default (fastest), openslide when asked; same pixels
    with open_slide(real_slide("cmu-1-small-region.svs"), backend=kind) as s:
        assert s.backend is (kind or Backend.TIFFFILE)
        assert s.level_count == 1 and s.level_dimensions == ((2220, 2967),)
        assert s.mpp == pytest.approx(0.499)
        assert s.objective_power == 20.0
        assert s.tile_size(0) == (240, 240)
        assert s.properties[f"{s.backend.value}.vendor"] == "aperio"
        assert set(s.associated_images) == {"label", "macro", "thumbnail"}
        thumb = s.associated_images["thumbnail"]
        assert thumb.dtype == np.uint8 and thumb.ndim == 3 and thumb.shape[2] == 3
        region = s.read_region((1000, 1000), 0, (64, 48))
        assert region.shape == (48, 64, 3) and region.dtype == np.uint8
        # same pixels as openslide itself (RGBA is opaque inside the slide)
        import openslide

        raw = np.asarray(openslide.OpenSlide(str(s.path)).read_region((1000, 1000), 0, (64, 48)))
        np.testing.assert_array_equal(region, raw[..., :3])


def test_cmu_forced_tiffslide_matches_openslide() -> None:
    path = real_slide("cmu-1-small-region.svs")
    with open_slide(path, backend="tiffslide") as t, open_slide(path) as o:
        assert t.backend is Backend.TIFFSLIDE
        assert t.mpp == pytest.approx(0.499) and t.level_dimensions == o.level_dimensions
        a = t.read_region((500, 700), 0, (100, 80)).astype(int)
        b = o.read_region((500, 700), 0, (100, 80)).astype(int)
        assert np.abs(a - b).mean() < 2.0  # two JPEG decoders


def test_tcga_two_levels_without_mpp() -> None:
    with open_slide(real_slide("tcga-cr-7395-01a-01-ts1.svs")) as s:
        assert s.backend is Backend.OPENSLIDE
        assert s.level_dimensions == ((4443, 3567), (2221, 1783))
        assert s.level_downsamples[1] == pytest.approx(2.0005, abs=1e-3)
        assert s.mpp is None and s.objective_power is None
        with pytest.raises(MissingMppError, match="fallback_mpp"):
            s.read((0, 0, 100, 100), mpp=1.0)
        out = s.read((0, 0, 400, 200), mpp=1.0, fallback_mpp=0.5)
        assert out.shape == (100, 200, 3)
        assert s.best_level_for_downsample(2.0) == 1  # 2.0005 within the 1% tolerance
        assert s.best_level_for_downsample(1.9) == 0


def test_ome_tiff_read_directly_not_by_openslide() -> None:
    path = real_slide("OS-1-detail.ome.tif")
    with open_slide(path) as s, open_slide(path, backend="tiffslide") as t:
        assert s.backend is Backend.TIFFFILE
        np.testing.assert_array_equal(s.read_region((0, 0), 0, (1101, 1101)), t.read_region((0, 0), 0, (1101, 1101)))
    with open_slide(path) as s:
        assert s.level_dimensions == ((1101, 1101),)
        assert s.mpp == pytest.approx(0.227, abs=1e-3)
        assert s.tile_size(0) == (512, 512)
        assert s.read_region((1000, 1000), 0, (200, 200))[150:, :].min() == 255  # outside is white
    with pytest.raises(UnsupportedSlideError, match="openslide"):
        open_slide(path, backend=Backend.OPENSLIDE)


def test_png_image_backend() -> None:
    path = real_slide("target_image.png")
    with open_slide(path) as s:
        assert s.backend is Backend.IMAGE
        assert s.level_dimensions == ((1000, 1000),) and s.mpp is None
        assert s.tile_size(0) == (512, 512)
        from PIL import Image

        ref = np.asarray(Image.open(path).convert("RGB"))
        np.testing.assert_array_equal(s.read_region((990, 10), 0, (20, 5))[:, :10], ref[10:15, 990:])
        assert (s.read_region((990, 10), 0, (20, 5))[:, 10:] == 255).all()


def test_generated_pyramid_via_both_backends(tmp_path) -> None:
    path, rgb = make_pyramid(tmp_path / "gen.tif", 600, 1000, mpp=0.25, tile_size=128)
    for kind in (Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE):
        with open_slide(path, backend=kind) as s:
            assert s.backend is kind
            assert s.level_dimensions == ((1000, 600), (500, 300), (250, 150), (125, 75))
            assert s.level_downsamples == pytest.approx((1, 2, 4, 8))
            assert s.mpp == pytest.approx(0.25)
            assert s.tile_size(1) == (128, 128)
            assert np.abs(s.read_level(0, (0, 0), (1000, 600)).astype(int) - rgb).mean() < 3
    with open_slide(path) as s:
        assert s.backend is Backend.TIFFFILE  # JPEG tiles: the direct reader is the default


def test_backend_chosen_by_compression_and_overridable(tmp_path, monkeypatch) -> None:
    with open_slide(real_slide("tcga-cr-7395-01a-01-ts1.svs")) as s:
        assert s.backend is Backend.OPENSLIDE  # JPEG 2000: openslide decodes it ~2x faster than tifffile
    raw, _ = make_pyramid(tmp_path / "raw.tif", 300, 400, tile_size=128, compression=None)
    with open_slide(raw) as s, open_slide(raw, backend="openslide") as o:
        assert s.backend is Backend.TIFFFILE
        for lvl in range(s.level_count):
            np.testing.assert_array_equal(
                s.read_level(lvl, (0, 0), s.level_dimensions[lvl]), o.read_level(lvl, (0, 0), o.level_dimensions[lvl])
            )
    monkeypatch.setenv("PROTOSEG_SLIDE_BACKEND", "tiffslide")
    with open_slide(raw) as s:
        assert s.backend is Backend.TIFFSLIDE
    monkeypatch.setenv("PROTOSEG_SLIDE_BACKEND", "nonsense")
    with pytest.raises(UnsupportedSlideError, match="PROTOSEG_SLIDE_BACKEND"):
        open_slide(raw)


def test_generated_pyramid_without_mpp(tmp_path) -> None:
    path, _ = make_pyramid(tmp_path / "nompp.tif", 300, 400, mpp=None, tile_size=128)
    for kind in (Backend.OPENSLIDE, Backend.TIFFSLIDE, Backend.TIFFFILE):
        with open_slide(path, backend=kind) as s:
            assert s.mpp is None and s.level_count == 3  # 400 -> 200 -> 100 (fits a 128 tile)
            with pytest.raises(MissingMppError):
                s.read((0, 0, 10, 10), mpp=0.5)


def test_rgba_png_composited_on_white(tmp_path) -> None:
    from PIL import Image

    rgba = np.zeros((4, 5, 4), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = 200, 100, 0
    rgba[..., 3] = np.array([0, 64, 128, 255, 255], np.uint8)[None, :]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png") as s:
        got = s.read_region((0, 0), 0, (5, 4))
    a = rgba[..., 3:4].astype(float) / 255
    expected = np.rint(rgba[..., :3] * a + 255 * (1 - a))
    assert np.abs(got.astype(int) - expected).max() <= 1
    assert (got[:, 0] == 255).all() and (got[:, 3] == (200, 100, 0)).all()


@pytest.mark.parametrize("name", ["rand.svs", "rand.tif", "rand.png"])
def test_random_bytes_are_corrupt(tmp_path, name) -> None:
    p = tmp_path / name
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(CorruptSlideError, match="damaged|re-download"):
        open_slide(p)


def test_truncated_tif_is_corrupt(tmp_path) -> None:
    path, _ = make_pyramid(tmp_path / "full.tif", 500, 700, tile_size=128)
    data = path.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError):
        open_slide(cut)


def test_truncated_svs_is_corrupt(tmp_path) -> None:
    data = real_slide("cmu-1-small-region.svs").read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CorruptSlideError):
        open_slide(cut)


def test_missing_and_unsupported(tmp_path) -> None:
    with pytest.raises(SlideNotFoundError):
        open_slide(tmp_path / "nope.svs")
    (tmp_path / "a.xyz").write_bytes(b"hello")
    with pytest.raises(UnsupportedSlideError) as info:
        open_slide(tmp_path / "a.xyz")
    assert ".svs" in str(info.value) and ".ndpi" in str(info.value) and ".svs" in SUPPORTED_EXTENSIONS
    assert isinstance(info.value, ProtosegError)


def test_bad_requests_and_close(tmp_path) -> None:
    path, _ = make_pyramid(tmp_path / "g.tif", 200, 300, tile_size=128)
    s = open_slide(path)
    with pytest.raises(SlideRequestError):
        s.read_region((0, 0), 5, (10, 10))
    with pytest.raises(SlideRequestError):
        s.read_region((0, 0), 0, (-1, 10))
    s.close()
    with pytest.raises(SlideRequestError, match="closed"):
        s.read_region((0, 0), 0, (10, 10))
