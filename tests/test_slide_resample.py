"""``read_at_scale``'s resampling against a plain float64 area-average reference (non-integer shrink path)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from protoseg.infer.memory import ArraySlide
from protoseg.slide import read_at_scale
from protoseg.slide.resample import _bands, _taps


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _area_matrix(start: float, stop: float, n: int, length: int) -> np.ndarray:
    """(n, length) float64: covered fraction of input pixel j by output pixel i's footprint, rows summing to 1."""
    k = (stop - start) / n
    m = np.zeros((n, length))
    for i in range(n):
        lo, hi = start + i * k, start + (i + 1) * k
        for j in range(max(0, math.floor(lo)), min(length, math.ceil(hi))):
            m[i, j] = max(0.0, min(j + 1, hi) - max(j, lo))
    return m / m.sum(axis=1, keepdims=True)


def _reference(img: np.ndarray, box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """Area average of a box inside a level-0-only image, in float64 (not rounded)."""
    x, y, w, h = box
    my = _area_matrix(y, y + h, size[1], img.shape[0])
    mx = _area_matrix(x, x + w, size[0], img.shape[1])
    return np.einsum("iy,yxc,jx->ijc", my, img.astype(np.float64), mx, optimize=True)


@pytest.mark.parametrize("seed", range(6))
def test_matches_a_float64_area_average_within_one_grey_level(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    img = _image(70, 90, seed)
    slide = ArraySlide(img)
    for _ in range(5):
        ow, oh = int(rng.integers(1, 24)), int(rng.integers(1, 24))
        kx, ky = rng.uniform(1.05, 2.9), rng.uniform(1.05, 2.9)
        x, y = rng.uniform(0, 90 - ow * kx), rng.uniform(0, 70 - oh * ky)
        got = read_at_scale(slide, (x, y, ow * kx, oh * ky), (ow, oh)).astype(float)
        ref = _reference(img, (x, y, ow * kx, oh * ky), (ow, oh))
        assert got.shape == (oh, ow, 3)
        assert np.abs(got - ref).max() <= 0.5 + 1e-3  # rounded once, at the end
        assert np.abs(got - np.rint(ref)).max() <= 1


def test_overlapping_reads_give_identical_shared_pixels() -> None:
    img = _image(400, 500, 7)
    slide = ArraySlide(img)
    for s in (1.3, 2.37, 3.3):
        whole = read_at_scale(slide, (0, 0, 120 * s, 100 * s), (120, 100))
        for x0, y0, w, h in ((5, 3, 40, 30), (37, 41, 64, 50), (0, 70, 120, 30), (91, 2, 29, 97)):
            part = read_at_scale(slide, (x0 * s, y0 * s, w * s, h * s), (w, h))
            np.testing.assert_array_equal(part, whole[y0 : y0 + h, x0 : x0 + w])


def test_edge_cases_one_pixel_mild_and_huge_factors() -> None:
    img = _image(300, 400, 3)
    slide = ArraySlide(img)
    one = read_at_scale(slide, (10.5, 20.25, 333.3, 250.5), (1, 1))  # one pixel: the mean of the whole box
    assert np.abs(one[0, 0] - _reference(img, (10.5, 20.25, 333.3, 250.5), (1, 1))[0, 0]).max() <= 0.5 + 1e-3
    mild = read_at_scale(slide, (0.3, 0.7, 200 * 1.001, 150 * 1.001), (200, 150))  # just above 1
    assert np.abs(mild - _reference(img, (0.3, 0.7, 200.2, 150.15), (200, 150))).max() <= 0.5 + 1e-3
    huge = read_at_scale(slide, (0.5, 0.5, 399.0, 299.0), (3, 2))  # ~133x / ~150x
    assert np.abs(huge - _reference(img, (0.5, 0.5, 399.0, 299.0), (3, 2))).max() <= 0.5 + 1e-3
    row = read_at_scale(slide, (1.5, 2.5, 390.0, 1.7), (150, 1))  # one row, non-integer both ways
    assert np.abs(row - _reference(img, (1.5, 2.5, 390.0, 1.7), (150, 1))).max() <= 0.5 + 1e-3


def test_outside_the_slide_is_white_in_the_mean() -> None:
    img = np.zeros((40, 40, 3), np.uint8)
    out = read_at_scale(ArraySlide(img), (-20.0, 0.0, 60.0, 40.0), (20, 10))  # 3x4 boxes; leftmost ~7 are white
    assert (out[:, :6] == 255).all() and (out[:, 7:] == 0).all()
    assert 0 < out[0, 6, 0] < 255  # the box straddling the edge mixes both


def test_bands_reproduce_the_taps() -> None:
    index, weight = _taps(0.37, 0.37 + 50 * 2.3, 50, 120)
    dense = np.zeros((120, 50))
    for c0, c1, j0, j1, mat in _bands(index, weight, 7):
        assert mat.shape == (c1 - c0, j1 - j0)
        dense[c0:c1, j0:j1] += mat
    ref = np.zeros((120, 50))
    np.add.at(ref, (index, np.broadcast_to(np.arange(50), index.shape)), weight)
    np.testing.assert_allclose(dense, ref, atol=1e-7)
    np.testing.assert_allclose(dense.sum(axis=0), 1.0, atol=1e-6)
