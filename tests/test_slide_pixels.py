"""The one RGB normaliser (as_rgb_uint8) and the one resampled read (read_at_scale)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from protoseg.infer.memory import ArraySlide
from protoseg.slide import ImageFormatError, as_rgb_uint8, open_slide, read_at_scale


def _check(out: np.ndarray, expected) -> None:
    assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, np.asarray(expected, np.uint8))


def test_as_rgb_uint8_every_input_kind() -> None:
    grey = np.array([[0, 128], [200, 255]], np.uint8)
    _check(as_rgb_uint8(grey), np.repeat(grey[:, :, None], 3, axis=2))  # (H, W)
    _check(as_rgb_uint8(grey[:, :, None]), np.repeat(grey[:, :, None], 3, axis=2))  # (H, W, 1)
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    _check(as_rgb_uint8(rgb), rgb)
    _check(as_rgb_uint8(rgb[:, ::-1]), rgb[:, ::-1])  # non-contiguous view -> contiguous
    # RGBA: non-premultiplied alpha composited on white, rounded
    rgba = np.zeros((1, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 0)
    rgba[..., 3] = (0, 64, 128, 255)
    a = rgba[..., 3:].astype(float) / 255
    _check(as_rgb_uint8(rgba), np.rint(rgba[..., :3] * a + 255 * (1 - a)))
    opaque = np.concatenate([rgb, np.full((2, 3, 1), 255, np.uint8)], axis=2)
    _check(as_rgb_uint8(opaque), rgb)
    # grey + alpha
    la = np.stack([grey, np.full_like(grey, 0)], axis=2)
    _check(as_rgb_uint8(la), np.full((2, 2, 3), 255))
    # floats in [0, 1] (clipped), bool, wider integers within 0..255
    _check(as_rgb_uint8(np.array([[[0.0, 0.5, 1.0], [-1.0, 2.0, np.nan]]])), [[[0, 128, 255], [0, 255, 0]]])
    _check(as_rgb_uint8(np.array([[True, False]])), [[[255] * 3, [0] * 3]])
    _check(as_rgb_uint8(np.array([[[1, 2, 300 - 45]]], np.int64)), [[[1, 2, 255]]])
    # PIL images (RGB, RGBA, L) give the same as their arrays
    _check(as_rgb_uint8(Image.fromarray(rgb)), rgb)
    _check(as_rgb_uint8(Image.fromarray(rgba, "RGBA")), as_rgb_uint8(rgba))
    _check(as_rgb_uint8(Image.fromarray(grey, "L")), as_rgb_uint8(grey))


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((2, 2, 5), np.uint8),
        np.zeros((2,), np.uint8),
        np.full((2, 2, 3), 256, np.int32),
        np.zeros((2, 2, 3), complex),
    ],
)
def test_as_rgb_uint8_rejects_non_pictures(bad) -> None:
    with pytest.raises(ImageFormatError):
        as_rgb_uint8(bad)
    assert issubclass(ImageFormatError, ValueError)


def _image(h: int = 64, w: int = 96, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_read_at_scale_exact_on_the_level_grid() -> None:
    img = _image()
    slide = ArraySlide(img, levels=2)
    np.testing.assert_array_equal(read_at_scale(slide, (5, 7, 30, 20), (30, 20)), img[7:27, 5:35])
    # downsample 2 = level 1 exactly: the stored block means, unresampled
    np.testing.assert_array_equal(read_at_scale(slide, (10, 4, 40, 20), (20, 10)), slide._levels[1][2:12, 5:25])
    # past the edge: white
    out = read_at_scale(slide, (90, -3, 10, 5), (10, 5))
    np.testing.assert_array_equal(out[3:, :6], img[:2, 90:])
    assert (out[:3] == 255).all() and (out[:, 6:] == 255).all()


def test_read_at_scale_area_averages_and_tiles_line_up() -> None:
    img = _image(seed=1)
    slide = ArraySlide(img)  # level 0 only: 3x shrink is plain area averaging
    out = read_at_scale(slide, (0, 0, 96, 63), (32, 21))
    means = img[:63].astype(float).reshape(21, 3, 32, 3, 3).mean(axis=(1, 3))
    assert np.abs(out - means).max() <= 0.5 + 1e-9  # exact 3x3 means, rounded
    # prediction-grid tiles at a fractional scale: overlapping reads agree exactly on the overlap
    s = 1.7
    whole = read_at_scale(slide, (0, 0, 50 * s, 30 * s), (50, 30))
    for x0, y0 in ((7, 3), (20, 11), (33, 0)):
        part = read_at_scale(slide, (x0 * s, y0 * s, 17 * s, 13 * s), (17, 13))
        np.testing.assert_array_equal(part, whole[y0 : y0 + 13, x0 : x0 + 17])


def test_read_at_scale_same_pixels_for_slide_and_stand_in(tmp_path) -> None:
    img = _image(80, 120, seed=2)
    Image.fromarray(img).save(tmp_path / "s.png")
    fake = ArraySlide(img)
    with open_slide(tmp_path / "s.png") as slide:
        cases = (((3.5, 2.25, 60.0, 40.0), (27, 18)), ((10, 10, 20, 20), (33, 33)), ((100, 70, 40, 30), (20, 15)))
        for box, size in cases:
            np.testing.assert_array_equal(read_at_scale(slide, box, size), read_at_scale(fake, box, size))
        np.testing.assert_array_equal(slide.read((10, 20, 30, 40)), img[20:60, 10:40])


def test_prediction_grid_tiles_agree_at_a_fractional_scale() -> None:
    from protoseg.infer.reader import RegionReader

    slide = ArraySlide(_image(150, 200, seed=3), levels=3)
    reader = RegionReader(slide, 2.6)  # level 1 (downsample 2) resampled by 1.3
    assert reader.level == 1 and (reader.width, reader.height) == (77, 58)
    whole = reader.read((0, 0, reader.width, reader.height))
    for box in ((5, 9, 24, 24), (30, 21, 24, 24), (60, 40, 24, 24)):  # the last one padded past the edge
        x, y, w, h = box
        tile = reader.read(box)
        inside = whole[y : y + h, x : x + w]
        np.testing.assert_array_equal(tile[: inside.shape[0], : inside.shape[1]], inside)
