"""Batched rasterisation of soft elliptical nuclei (and discs such as red cells) into a density map."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


class Profile:
    """Radial density profiles inside a nucleus (rho = 0 centre, 1 edge)."""

    SOLID = "solid"  # evenly dark (lymphocytes, pyknotic fragments, fibroblasts)
    VESICULAR = "vesicular"  # dark rim, paler centre (tumour nuclei with open chromatin)
    RING = "ring"  # only a faint rim (ghost nuclei, red-cell outline)
    PALLOR = "pallor"  # disc with central pallor (red blood cells)


@dataclass
class Nuclei:
    """Per-nucleus parameters; all arrays have one entry per nucleus."""

    cy: np.ndarray
    cx: np.ndarray
    a: np.ndarray  # semi-axis along ``theta`` (px)
    b: np.ndarray  # semi-axis across ``theta`` (px)
    theta: np.ndarray  # orientation of the ``a`` axis, radians, in (x, y) image coordinates
    strength: np.ndarray  # peak optical density
    irregularity: float = 0.0
    nucleoli: np.ndarray | None = None  # optical density of one nucleolus per nucleus (0 = none)


def stamp(
    shape: tuple[int, int],
    n: Nuclei,
    profile: str,
    rng: np.random.Generator,
    texture: np.ndarray | None = None,
    chunk: int = 4096,
) -> np.ndarray:
    """Density map (H, W): sum of the nuclei stamps; ``texture`` (H, W) modulates chromatin."""
    h, w = shape
    out = np.zeros(h * w)
    count = n.cy.size
    if count == 0:
        return out.reshape(shape)
    radius = math.ceil(float(np.max(np.maximum(n.a, n.b)))) + 2
    off = np.arange(-radius, radius + 1, dtype=np.float64)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    harm = rng.uniform(0, 2 * np.pi, (count, 2))
    amps = rng.uniform(0.3, 1.0, (count, 2)) * n.irregularity
    nuc_pos = rng.uniform(-0.35, 0.35, (count, 2))
    for s in range(0, count, chunk):
        sl = slice(s, s + chunk)
        iy, ix = np.round(n.cy[sl]).astype(int), np.round(n.cx[sl]).astype(int)
        dy = oy[None] - (n.cy[sl] - iy)[:, None, None]
        dx = ox[None] - (n.cx[sl] - ix)[:, None, None]
        c, si = np.cos(n.theta[sl])[:, None, None], np.sin(n.theta[sl])[:, None, None]
        u = (dx * c + dy * si) / n.a[sl][:, None, None]
        v = (-dx * si + dy * c) / n.b[sl][:, None, None]
        rho = np.sqrt(u * u + v * v)
        if n.irregularity > 0:
            phi = np.arctan2(v, u)
            rho = rho * (
                1
                + amps[sl, 0, None, None] * np.sin(2 * phi + harm[sl, 0, None, None])
                + 0.6 * amps[sl, 1, None, None] * np.sin(3 * phi + harm[sl, 1, None, None])
            )
        edge = 1.0 / np.minimum(n.a[sl], n.b[sl])[:, None, None]  # about one pixel of soft edge
        inside = np.clip((1.0 - rho) / edge + 0.5, 0.0, 1.0)
        r = np.clip(rho, 0.0, 1.0)
        if profile == Profile.VESICULAR:
            val = 0.5 + 0.5 * r**3
        elif profile == Profile.RING:
            val = 0.15 + 0.85 * r**4
        elif profile == Profile.PALLOR:
            val = 0.45 + 0.55 * np.clip(r * 1.4, 0, 1) ** 2
        else:
            val = np.ones_like(r)
        val = val * inside * n.strength[sl][:, None, None]
        if n.nucleoli is not None:
            du, dv = u - nuc_pos[sl, 0, None, None], v - nuc_pos[sl, 1, None, None]
            d2 = (du * n.a[sl][:, None, None]) ** 2 + (dv * n.b[sl][:, None, None]) ** 2
            val = val + n.nucleoli[sl][:, None, None] * np.exp(-d2 / (2 * 1.1**2)) * inside
        py, px = iy[:, None, None] + oy[None].astype(int), ix[:, None, None] + ox[None].astype(int)
        ok = (py >= 0) & (py < h) & (px >= 0) & (px < w) & (inside > 0)
        flat = (py * w + px)[ok]
        vals = val[ok]
        if texture is not None:
            vals = vals * np.clip(1.0 + texture.ravel()[flat], 0.2, 2.0)
        out += np.bincount(flat, weights=vals, minlength=h * w)
    return out.reshape(shape)
