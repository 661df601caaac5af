"""Tissue detection on a low-resolution thumbnail: Otsu on saturation and optical density, with
stain-plausibility (hue) filtering against pen ink, small-object removal and hole filling."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from protoseg.slide.slide import Slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Boolean tissue mask at thumbnail scale; ``downsample`` = level-0 pixels per mask pixel."""

    mask: np.ndarray
    downsample: float
    thresholds: dict[str, float] = field(default_factory=dict)

    @cached_property
    def _integral(self) -> np.ndarray:
        """Summed-area table with a zero first row/column, for O(1) box fractions."""
        sat = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), np.int64)
        sat[1:, 1:] = np.cumsum(np.cumsum(self.mask, axis=0, dtype=np.int64), axis=1)
        return sat

    def fraction(self, x: float, y: float, w: float, h: float) -> float:
        """Fraction of tissue in the level-0 box (x, y, w, h); the box is clipped to the mask."""
        mh, mw = self.mask.shape
        c0 = min(max(math.floor(x / self.downsample), 0), mw)
        r0 = min(max(math.floor(y / self.downsample), 0), mh)
        c1 = min(max(math.ceil((x + w) / self.downsample), c0), mw)
        r1 = min(max(math.ceil((y + h) / self.downsample), r0), mh)
        if c1 == c0 or r1 == r0:
            return 0.0
        s = self._integral
        count = s[r1, c1] - s[r0, c1] - s[r1, c0] + s[r0, c0]
        return float(count) / float((r1 - r0) * (c1 - c0))

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the whole slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0


def _otsu(values: np.ndarray, lo: float, hi: float) -> float:
    """Otsu threshold clamped into [lo, hi]: adapts per slide, but stays sane on tiles of one class."""
    from skimage.filters import threshold_otsu

    if values.size == 0 or float(values.min()) == float(values.max()):
        return lo
    return float(min(max(threshold_otsu(values), lo), hi))


def tissue_pixels(
    rgb: np.ndarray,
    sat_bounds: tuple[float, float] = (0.05, 0.15),
    od_bounds: tuple[float, float] = (0.1, 0.3),
    reject_hues: tuple[float, float] | None = (20.0, 200.0),
) -> tuple[np.ndarray, dict[str, float]]:
    """Per-pixel tissue test on an (H, W, 3) uint8 image, before morphology; returns (mask, thresholds).

    Tissue = saturation > Otsu and optical density (sum over channels) > Otsu, each Otsu clamped to
    its bounds. Pixels whose hue lies in ``reject_hues`` (degrees; yellow-green-cyan, where neither
    haematoxylin nor eosin absorb) are rejected as ink/pen/debris.
    """
    from skimage.color import rgb2hsv

    hsv = rgb2hsv(rgb)
    sat = hsv[..., 1]
    od = -np.log10((rgb.astype(np.float32) + 1.0) / 256.0).sum(axis=-1)
    t_sat = _otsu(sat.ravel(), *sat_bounds)
    t_od = _otsu(od.ravel(), *od_bounds)
    mask = (sat > t_sat) & (od > t_od)
    if reject_hues is not None:
        hue = hsv[..., 0] * 360.0
        mask &= ~((hue > reject_hues[0]) & (hue < reject_hues[1]))
    return mask, {"saturation": t_sat, "optical_density": t_od}


def tissue_mask(
    slide: Slide,
    max_size: int = 1024,
    min_object_px: int | None = None,
    max_hole_px: int | None = None,
    **pixel_kwargs: object,
) -> TissueMask:
    """Tissue mask of ``slide`` from a thumbnail whose longer side is ``max_size``.

    ``min_object_px`` (default: 1/2000 of the thumbnail area, at least 16) removes specks; holes up
    to ``max_hole_px`` (default 4x that) are filled. ``pixel_kwargs`` go to ``tissue_pixels``.
    """
    from skimage.morphology import remove_small_holes, remove_small_objects

    thumb = slide.thumbnail(max_size)
    mask, thresholds = tissue_pixels(thumb, **pixel_kwargs)  # type: ignore[arg-type]
    min_obj = max(16, mask.size // 2000) if min_object_px is None else int(min_object_px)
    max_hole = 4 * min_obj if max_hole_px is None else int(max_hole_px)
    if min_obj > 0:
        mask = (
            remove_small_objects(mask, max_size=min_obj - 1) if _has_max_size() else remove_small_objects(mask, min_obj)
        )
    if max_hole > 0:
        mask = remove_small_holes(mask, max_size=max_hole) if _has_max_size() else remove_small_holes(mask, max_hole)
    w0, h0 = slide.dimensions
    downsample = (w0 / thumb.shape[1] + h0 / thumb.shape[0]) / 2
    logger.debug("tissue mask of %s: %.1f%% tissue, thresholds %s", slide.path, 100 * mask.mean(), thresholds)
    return TissueMask(mask=mask, downsample=downsample, thresholds=thresholds)


def _has_max_size() -> bool:
    """scikit-image >= 0.26 renamed min_size/area_threshold to max_size (old names deprecated)."""
    import inspect

    from skimage.morphology import remove_small_objects

    return "max_size" in inspect.signature(remove_small_objects).parameters
