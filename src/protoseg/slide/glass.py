"""Glass (no-tissue) detection on one RGB patch: adaptive saturation and optical-density thresholds,
then an opening and small-object removal so that pale gaps inside tissue stay tissue.

This is the pseudo-mask background rule (``protoseg.cams.glass_background``); the slide-level tissue
mask (``protoseg.slide.tissue``) uses the same Otsu-on-saturation/OD idea on a thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from protoseg.slide.tissue import _has_max_size, _otsu

#: Otsu threshold clamps for glass: glass is near-white and unsaturated under any H&E stain/scanner.
GLASS_SAT_BOUNDS: tuple[float, float] = (0.04, 0.10)
GLASS_OD_BOUNDS: tuple[float, float] = (0.10, 0.20)


@dataclass(frozen=True)
class GlassRule:
    """How glass is told apart from pale tissue.

    ``open_radius``: glass narrower than a disc of this radius (fraction of the patch's shorter side)
    is a gap inside tissue (lymphocyte spacing, loose stroma), not background; ``min_size``: glass
    regions smaller than this many pixels are dropped too.
    """

    open_radius: float = 0.03
    min_size: int = 300
    smooth: float = 1.0  # Gaussian sigma (pixels) before the colour test: scanner noise does not split glass
    sat_bounds: tuple[float, float] = GLASS_SAT_BOUNDS
    od_bounds: tuple[float, float] = GLASS_OD_BOUNDS


def glass_pixels(rgb: np.ndarray, rule: GlassRule = GlassRule()) -> tuple[np.ndarray, dict[str, float]]:
    """Per-pixel glass test on an (H, W, 3) uint8 image before morphology; returns (mask, thresholds).

    Glass = saturation <= Otsu and optical density (sum over RGB) <= Otsu, each Otsu threshold
    clamped into its bounds: on a tile with glass and tissue it falls between the two, on a tile of
    tissue (or of glass) only it stays at a bound, so one tile's colours cannot turn tissue into glass.
    """
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"glass_pixels expects an (H, W, 3) RGB image, got shape {rgb.shape}")
    rgbf = rgb.astype(np.float32)
    if rule.smooth > 0:
        from scipy import ndimage

        rgbf = ndimage.gaussian_filter(rgbf, sigma=(rule.smooth, rule.smooth, 0))
    hi, lo = rgbf.max(axis=-1), rgbf.min(axis=-1)
    sat = np.where(hi > 0, (hi - lo) / np.maximum(hi, 1e-6), 0.0)  # HSV saturation
    od = -np.log10((rgbf + 1.0) / 256.0).sum(axis=-1)
    t_sat = _otsu(sat.ravel(), *rule.sat_bounds)
    t_od = _otsu(od.ravel(), *rule.od_bounds)
    return (sat <= t_sat) & (od <= t_od), {"saturation": t_sat, "optical_density": t_od}


def glass_mask(rgb: np.ndarray, rule: GlassRule = GlassRule()) -> np.ndarray:
    """Bool (H, W) mask of glass (background) in an (H, W, 3) uint8 patch; see :class:`GlassRule`."""
    from scipy import ndimage
    from skimage.morphology import remove_small_objects

    mask, _ = glass_pixels(rgb, rule)
    radius = round(rule.open_radius * min(mask.shape))
    if radius >= 1 and mask.any():
        # opening by a disc via two Euclidean distance transforms (linear time, any radius); glass
        # running off the patch edge is not eroded from the edge side
        eroded = ndimage.distance_transform_edt(mask) > radius
        mask = mask & (ndimage.distance_transform_edt(~eroded) <= radius) if eroded.any() else np.zeros_like(mask)
    if rule.min_size > 1:
        if _has_max_size():
            mask = remove_small_objects(mask, max_size=rule.min_size - 1)
        else:
            mask = remove_small_objects(mask, rule.min_size)
    return mask
