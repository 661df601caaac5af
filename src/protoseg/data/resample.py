"""Patches at another resolution (``data.scale``): images area-averaged or interpolated, index masks by nearest
neighbour; numpy and Pillow only, so torch-free layers (baselines, benchmarks) share the one rule."""

from __future__ import annotations

import numpy as np
from PIL import Image


def rescaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """(width, height) of an image resampled by ``scale`` (rounded, at least 1 px)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def rescale_image(rgb: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB resampled by ``scale`` (area average when shrinking, bilinear when enlarging); 1 is a no-op."""
    if scale == 1:
        return rgb
    size = rescaled_size(rgb.shape[1], rgb.shape[0], scale)
    method = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    return np.array(Image.fromarray(rgb).resize(size, method))  # writable, as load_image's


def rescale_mask(mask: np.ndarray, scale: float) -> np.ndarray:
    """Index mask resampled by ``scale`` with nearest neighbours (class indices never blend); 1 is a no-op."""
    if scale == 1:
        return mask
    w, h = rescaled_size(mask.shape[1], mask.shape[0], scale)
    rows = np.minimum(((np.arange(h) + 0.5) * mask.shape[0] / h).astype(np.intp), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * mask.shape[1] / w).astype(np.intp), mask.shape[1] - 1)
    return mask[rows[:, None], cols[None, :]]  # the source pixel under each output pixel's centre
