"""Render an H&E-like RGB image for a class label map (0..C-1 tissue classes, C background)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from protoseg.data.synthetic.noise import fine_noise, smooth_noise
from protoseg.data.synthetic.stains import Stain
from protoseg.data.synthetic.textures import RENDERERS

NUM_CLASSES = len(RENDERERS)  # TUM, STR, LYM, NEC (BCSS-WSSS order)


def _bbox(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return (
        slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, mask.shape[0])),
        slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, mask.shape[1])),
    )


def render_tissue(
    label_map: np.ndarray, rng: np.random.Generator, stain: Stain | None = None, variants: int = 1
) -> np.ndarray:
    """uint8 (H, W, 3) H&E-like image; classes 0..3 = TUM, STR, LYM, NEC, anything else = glass.

    Deterministic given ``rng``'s state. Stain vectors and intensities are drawn per image (unless
    ``stain`` is given) so that colour alone does not identify a class. ``variants`` > 1 splits
    each class into that many smooth zones, each with its own sub-type (useful for whole slides).
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 2:
        raise ValueError(f"label_map must be 2-D (H, W), got shape {label_map.shape}")
    shape = label_map.shape
    stain = stain or Stain.random(rng)
    h_od, e_od, r_od, tissue = (np.zeros(shape) for _ in range(4))
    zones = np.zeros(shape, dtype=np.int64)
    if variants > 1:
        zones = np.argmax(np.stack([smooth_noise(shape, max(shape) / 3, rng) for _ in range(variants)]), axis=0)
    for c, render in enumerate(RENDERERS):
        for z in range(variants):
            mask = (label_map == c) & (zones == z)
            if not mask.any():
                continue
            box = _bbox(mask, margin=16)
            sub = mask[box]
            soft = ndimage.gaussian_filter(sub.astype(np.float64), 1.2)
            h_bg, e_bg, red, h_nuc = render(sub.shape, sub, rng)
            # per-region intensity drift on top of the per-image stain
            h_od[box] += soft * h_bg + h_nuc * rng.uniform(0.85, 1.15)
            e_od[box] += soft * e_bg * rng.uniform(0.85, 1.15)
            r_od[box] += red
            tissue[box] += soft
    # glass: nearly clear with faint dust / tint
    glass = np.clip(1.0 - tissue, 0.0, 1.0)
    e_od += glass * np.clip(0.015 + 0.01 * smooth_noise(shape, 20, rng) + 0.008 * fine_noise(shape, 1, rng), 0, None)
    np.clip(h_od, 0, 3.5, out=h_od)
    return stain.to_rgb(h_od, e_od, r_od, rng)
