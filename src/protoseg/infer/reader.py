"""Read slide pixels on the prediction grid (the model's mpp), padding past the slide edges.

Works on anything shaped like ``protoseg.slide.Slide`` (see ``SlideLike``), so tests and callers
can pass in-memory slides. The slide's own mpp may be missing: callers pass ``slide_mpp``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np

from protoseg.config_ranges import MPP, MPP_SCALE, check_value
from protoseg.infer.errors import InferenceError
from protoseg.slide.errors import MissingMppError
from protoseg.slide.resample import SlideLike, best_level, read_at_scale

logger = logging.getLogger(__name__)

#: Relative mpp mismatch under which the slide is read at its native resolution (no resampling).
MPP_SNAP_TOLERANCE = 0.02


class PadMode(str, Enum):
    """How tiles are filled past the slide edge."""

    WHITE = "white"  # glass-like background (what H&E models see around tissue)
    REFLECT = "reflect"  # mirror the pixels inside the slide


def open_any(slide: SlideLike | str | os.PathLike[str]) -> SlideLike:
    """Open a path with ``protoseg.slide.open_slide``; pass slide objects through."""
    if isinstance(slide, (str, os.PathLike)):
        from protoseg.slide import open_slide

        return open_slide(slide)
    return slide


def slide_name(slide: Any) -> str:
    """A printable name for log and error messages."""
    return str(getattr(slide, "path", None) or getattr(slide, "name", None) or type(slide).__name__)


@dataclass(frozen=True)
class Resolution:
    """How the slide maps onto the prediction grid: ``scale`` level-0 px per prediction px."""

    scale: float
    slide_mpp: float | None
    output_mpp: float | None


def resolve_resolution(slide: SlideLike, model_mpp: float | None, slide_mpp: float | None = None) -> Resolution:
    """Prediction resolution for a slide; a clear error when the model has an mpp and the slide none."""
    name = slide_name(slide)
    s_mpp = slide_mpp if slide_mpp is not None else getattr(slide, "mpp", None)
    if s_mpp is not None:
        if isinstance(s_mpp, bool) or not isinstance(s_mpp, (int, float)):
            raise MissingMppError(f"slide mpp of {name} must be a number of microns per pixel, got {s_mpp!r}")
        check_value(f"slide mpp of {name}", s_mpp, MPP, MissingMppError, "pass the scan's resolution (--slide-mpp)")
    if model_mpp is not None:
        check_value("model mpp", model_mpp, MPP, InferenceError, "use the checkpoint training wrote")
    if model_mpp is None:
        logger.warning("model has no mpp: predicting %s at its native resolution", slide_name(slide))
        return Resolution(1.0, s_mpp, s_mpp)
    if s_mpp is None:
        raise MissingMppError(
            f"slide {slide_name(slide)} has no microns-per-pixel metadata and the model expects "
            f"{model_mpp} um/px; pass the slide's resolution with --slide-mpp (slide_mpp=...), "
            "e.g. 0.25 for 40x or 0.5 for 20x scans."
        )
    scale = float(model_mpp) / float(s_mpp)
    if MPP_SCALE.problem(scale) is not None:
        raise InferenceError(
            f"{name} at {s_mpp:g} µm/px would be resampled {max(scale, 1 / scale):.0f}x for a model at "
            f"{model_mpp:g} µm/px (model/slide must be {MPP_SCALE.describe()}): one of the two resolutions is "
            "wrong; check --slide-mpp or the slide's metadata"
        )
    if abs(scale - 1.0) <= MPP_SNAP_TOLERANCE:
        return Resolution(1.0, float(s_mpp), float(s_mpp))
    return Resolution(scale, float(s_mpp), float(model_mpp))


def prediction_size(slide: SlideLike, scale: float) -> tuple[int, int]:
    """(width, height) of the prediction grid covering the slide's level 0."""
    w0, h0 = slide.level_dimensions[0]
    return max(1, round(w0 / scale)), max(1, round(h0 / scale))


class RegionReader:
    """Reads (x, y, w, h) boxes of the prediction grid as uint8 (h, w, 3), padded past the edges.

    Prediction pixel (i, j) covers level-0 [i * scale, (i + 1) * scale) x [j * scale, (j + 1) * scale);
    pixels come from ``protoseg.slide.read_at_scale`` (sub-pixel exact, so tiles agree where they overlap).
    """

    def __init__(self, slide: SlideLike, scale: float, pad: PadMode | str = PadMode.WHITE) -> None:
        self.slide = slide
        self.scale = float(scale)
        self.pad = PadMode(pad)
        self.width, self.height = prediction_size(slide, self.scale)
        self.level = best_level(slide.level_downsamples, self.scale)  # the same level for every tile

    def _read_inside(self, x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
        """Pixels of the prediction box [x0, x1) x [y0, y1), which lies inside the prediction grid."""
        s = self.scale
        box = (x0 * s, y0 * s, (x1 - x0) * s, (y1 - y0) * s)
        return read_at_scale(self.slide, box, (x1 - x0, y1 - y0), level=self.level)

    def read(self, box: tuple[int, int, int, int]) -> np.ndarray:
        """uint8 (h, w, 3) for the box (x, y, w, h) on the prediction grid; outside pixels padded."""
        x, y, w, h = box
        ix0, iy0 = max(0, x), max(0, y)
        ix1, iy1 = min(self.width, x + w), min(self.height, y + h)
        if ix0 >= ix1 or iy0 >= iy1:
            return np.full((h, w, 3), 255, np.uint8)
        inside = self._read_inside(ix0, iy0, ix1, iy1)
        pads = ((iy0 - y, y + h - iy1), (ix0 - x, x + w - ix1), (0, 0))
        if not any(p for pair in pads for p in pair):
            return inside
        if self.pad is PadMode.REFLECT:
            return np.pad(inside, pads, mode="symmetric")
        return np.pad(inside, pads, mode="constant", constant_values=255)
