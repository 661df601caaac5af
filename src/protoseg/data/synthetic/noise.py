"""Vectorised random fields and point processes used by the synthetic tissue renderer."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage


def smooth_noise(shape: tuple[int, int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std smooth random field with features about ``scale`` pixels wide."""
    h, w = shape
    scale = max(float(scale), 1.0)
    coarse = rng.standard_normal((math.ceil(h / scale) + 4, math.ceil(w / scale) + 4))
    # separable cubic (Catmull-Rom) upsampling of a coarse white-noise grid ("value noise")
    field = _upsample(_upsample(coarse, h, scale, axis=0), w, scale, axis=1)
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def _upsample(arr: np.ndarray, n: int, scale: float, axis: int) -> np.ndarray:
    """Sample ``arr`` at (i + 0.5) / scale + 1.5, i < n, along ``axis`` (grid padded: no clipping)."""
    pos = (np.arange(n) + 0.5) / scale + 1.5
    i = np.floor(pos).astype(int)
    t = pos - i
    coef = (
        0.5 * (-t + 2 * t * t - t**3),
        0.5 * (2 - 5 * t * t + 3 * t**3),
        0.5 * (t + 4 * t * t - 3 * t**3),
        0.5 * (-t * t + t**3),
    )
    out = None
    for k, c in enumerate(coef):
        term = np.take(arr, i - 1 + k, axis=axis) * (c[:, None] if axis == 0 else c[None, :])
        out = term if out is None else out + term
    return out


def fine_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-std white noise blurred by ``sigma`` pixels (grain, chromatin, debris)."""
    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma) if sigma > 0 else rng.standard_normal(shape)
    field -= field.mean()
    sd = field.std()
    return field / sd if sd > 0 else field


def jittered_points(
    shape: tuple[int, int],
    spacing: float,
    jitter: float,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
    keep: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """Points on a hexagonal grid of ``spacing`` px, jittered by ``jitter*spacing``, kept inside ``mask``."""
    h, w = shape
    dy = spacing * math.sqrt(3) / 2
    ys = np.arange(-spacing, h + spacing, dy)
    xs = np.arange(-spacing, w + spacing, spacing)
    gy, gx = np.meshgrid(ys, xs, indexing="ij")
    gx = gx + (np.arange(len(ys))[:, None] % 2) * spacing / 2 + rng.uniform(0, spacing)
    gy = gy + rng.uniform(0, dy)
    cy = gy.ravel() + rng.normal(0, jitter * spacing, gy.size)
    cx = gx.ravel() + rng.normal(0, jitter * spacing, gx.size)
    ok = (cy >= 0) & (cy <= h - 1) & (cx >= 0) & (cx <= w - 1)
    if keep < 1.0:
        ok &= rng.random(cy.size) < keep
    cy, cx = cy[ok], cx[ok]
    if mask is not None:
        inside = mask[np.round(cy).astype(int), np.round(cx).astype(int)]
        cy, cx = cy[inside], cx[inside]
    return cy, cx


def voronoi_edges(shape: tuple[int, int], cy: np.ndarray, cx: np.ndarray) -> np.ndarray:
    """Float map that is 1 on the borders between the Voronoi cells of the points (cell membranes)."""
    if cy.size == 0:
        return np.zeros(shape)
    seeds = np.ones(shape, dtype=bool)
    seeds[np.round(cy).astype(int), np.round(cx).astype(int)] = False
    _, (iy, ix) = ndimage.distance_transform_edt(seeds, return_indices=True)
    owner = iy * shape[1] + ix
    edge = np.zeros(shape, dtype=bool)
    edge[:, 1:] |= owner[:, 1:] != owner[:, :-1]
    edge[1:, :] |= owner[1:, :] != owner[:-1, :]
    return ndimage.gaussian_filter(edge.astype(np.float64), 0.6) * 2.0
