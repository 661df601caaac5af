"""Prediction overlays as napari layer data (Qt-free): class colormaps, placement on the slide layer, lazy
per-class CAM images and a class-mask Labels pyramid read through a ``ChunkScheduler`` (never blocking the
caller), and finished batch OME-Zarr results as layers.

Mask display convention: napari Labels treat 0 as transparent, while protoseg masks use 0..C-1 for the
tissue classes and C for background. Overlays therefore show ``mask + 1`` (:data:`MASK_OFFSET`): label
c+1 has the colour of class c, label C+1 (background) is transparent and label 0 marks chunks that are
still being computed (also transparent).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.napari.reader import LayerData
from protoseg.napari.scheduler import ChunkScheduler

MASK_OFFSET = 1


# ---- placement and colours ---------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """World ``scale``/``translate`` (row, col) of prediction level 0 so overlays sit on the slide layer."""

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[str, ...] | None = None

    @classmethod
    def on_slide(cls, slide_scale: Any, slide_translate: Any, factor: float, units: Any = None) -> Placement:
        """A prediction pixel covers ``factor`` level-0 slide pixels; napari pixel centres get the half-pixel shift."""
        s = np.asarray(slide_scale, np.float64)[-2:]
        t = np.asarray(slide_translate, np.float64)[-2:]
        scale = s * float(factor)
        translate = t + s * (float(factor) - 1.0) / 2.0
        unit_names = tuple(str(u) for u in units)[-2:] if units is not None else None
        return cls(tuple(float(v) for v in scale), tuple(float(v) for v in translate), unit_names)

    def kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scale": self.scale, "translate": self.translate}
        if self.units:
            out["units"] = self.units
        return out


def class_colormap(name: str, rgb: tuple[int, int, int]) -> Any:
    """Linear napari colormap from transparent black (score 0) to the class colour (score 1)."""
    from napari.utils.colormaps import Colormap

    top = [c / 255.0 for c in rgb] + [1.0]
    return Colormap(colors=[[0.0, 0.0, 0.0, 0.0], top], name=f"protoseg {name}", interpolation="linear")


def mask_colormap(classes: ClassSpec) -> Any:
    """DirectLabelColormap for ``mask + MASK_OFFSET``: class c -> its colour; pending/background transparent."""
    from napari.utils.colormaps import DirectLabelColormap

    colors: dict[int | None, Any] = {None: "transparent", 0: "transparent"}
    for i, rgb in enumerate(classes.colors):
        colors[i + MASK_OFFSET] = [v / 255.0 for v in rgb] + [1.0]
    colors[classes.background_index + MASK_OFFSET] = "transparent"
    return DirectLabelColormap(color_dict=colors)


def mask_features(classes: ClassSpec) -> dict[str, list[Any]]:
    """Labels ``features`` table: label value -> class name (shown in the status bar on hover)."""
    names = ["(computing)", *classes.names, classes.background_name]
    return {"index": list(range(len(names))), "class": names}


def cam_display(probs: np.ndarray, channel: int) -> np.ndarray:
    """What a CAM layer shows: the class score damped by the background score, ``p_c * (1 - p_bg)``
    (uint8), so white background stays transparent instead of a pale tint."""
    p = probs[channel].astype(np.uint16) * (255 - probs[-1].astype(np.uint16))
    return ((p + 127) // 255).astype(np.uint8)


# ---- overlay arrays ---------------------------------------------------------------------------
class OverlayLevel:
    """2-D array-like (one pyramid level, one class score or the mask + offset) read through a scheduler."""

    def __init__(self, scheduler: ChunkScheduler, level: int, channel: int | None = None, offset: int = 0) -> None:
        self.scheduler, self.level, self.channel, self.offset = scheduler, level, channel, int(offset)
        w, h = scheduler.lazy.levels[level]
        self.shape, self.dtype, self.ndim = (h, w), np.dtype(np.uint8), 2
        self.size = h * w

    def __len__(self) -> int:
        return self.shape[0]

    def window(self, y0: int, y1: int, x0: int, x1: int, wait: bool = False) -> np.ndarray:
        """Pixels [y0:y1, x0:x1]; chunks not computed yet are 0 unless ``wait`` (then computed here)."""
        lazy = self.scheduler.lazy
        c = lazy.layout.chunk
        out = np.zeros((max(0, y1 - y0), max(0, x1 - x0)), np.uint8)
        for cy in range(y0 // c, -(-y1 // c)):
            for cx in range(x0 // c, -(-x1 // c)):
                data = lazy.chunk(self.level, cy, cx) if wait else self.scheduler.get(self.level, cy, cx)
                if data is None:
                    continue
                h, w = data.mask.shape
                ay0, ay1 = max(y0, cy * c), min(y1, cy * c + h)
                ax0, ax1 = max(x0, cx * c), min(x1, cx * c + w)
                sl = (slice(ay0 - cy * c, ay1 - cy * c), slice(ax0 - cx * c, ax1 - cx * c))
                if self.channel is None:
                    block = data.mask[sl] + np.uint8(self.offset)
                else:
                    block = cam_display(data.probs[(slice(None), *sl)], self.channel)
                covered = getattr(data, "covered", None)  # a coarse chunk only partly computed so far
                if covered is not None:
                    block = np.where(covered[sl], block, np.uint8(0))
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = block
        return out

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is Ellipsis for k in key):
            i = key.index(Ellipsis)
            key = key[:i] + (slice(None),) * (2 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (2 - len(key))
        if len(key) != 2:
            raise IndexError(f"too many indices for a 2-d overlay level: {key!r}")
        (y0, y1, ys, yi), (x0, x1, xs, xi) = _axis(key[0], self.shape[0]), _axis(key[1], self.shape[1])
        arr = self.window(y0, y1, x0, x1)[::ys, ::xs]
        return arr[(0 if yi else slice(None), 0 if xi else slice(None))]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        arr = self[...]
        return arr if dtype is None else arr.astype(dtype)


def _axis(index: Any, size: int) -> tuple[int, int, int, bool]:
    """(start, stop, step, is_int) of an int or slice index along an axis of ``size``."""
    if isinstance(index, (int, np.integer)):
        i = int(index) + (size if index < 0 else 0)
        if not 0 <= i < size:
            raise IndexError(f"index {index} out of range for size {size}")
        return i, i + 1, 1, True
    if isinstance(index, slice):
        start, stop, step = index.indices(size)
        if step < 1:
            raise IndexError("only positive slice steps are supported")
        return start, max(start, stop), step, False
    raise IndexError(f"unsupported index {index!r}; use ints and slices")


# ---- layer data ------------------------------------------------------------------------------------
def overlay_layer_data(
    cams: list[list[Any]],
    mask: list[Any],
    classes: ClassSpec,
    placement: Placement,
    shown: int,
    suffix: str = "",
) -> list[LayerData]:
    """napari layer tuples: one additive CAM image per class (only ``shown`` visible) + the mask Labels."""
    multi = len(mask) > 1
    out: list[LayerData] = []
    for c, (name, rgb) in enumerate(zip(classes.names, classes.colors)):
        out.append(
            (
                cams[c] if multi else cams[c][0],
                {
                    "name": f"{name} CAM{suffix}",
                    "colormap": class_colormap(name, rgb),
                    "blending": "additive",
                    "contrast_limits": (0, 255),
                    "visible": c == shown,
                    "multiscale": multi,
                    **placement.kwargs(),
                    "metadata": {"protoseg_overlay": {"kind": "cam", "class": name, "index": c}},
                },
                "image",
            )
        )
    out.append(
        (
            mask if multi else mask[0],
            {
                "name": f"class mask{suffix}",
                "colormap": mask_colormap(classes),
                "features": mask_features(classes),
                "opacity": 0.6,
                "multiscale": multi,
                **placement.kwargs(),
                "metadata": {"protoseg_overlay": {"kind": "mask", "offset": MASK_OFFSET}},
            },
            "labels",
        )
    )
    return out


def lazy_layer_data(
    scheduler: ChunkScheduler,
    classes: ClassSpec,
    placement: Placement,
    shown: int = 0,
) -> list[LayerData]:
    """Overlays computed on demand from the scheduler's ``LazyPrediction``."""
    levels = range(len(scheduler.lazy.levels))
    cams = [[OverlayLevel(scheduler, k, c) for k in levels] for c in range(classes.num_classes)]
    mask = [OverlayLevel(scheduler, k, None, MASK_OFFSET) for k in levels]
    return overlay_layer_data(cams, mask, classes, placement, shown)


def zarr_layer_data(pred: Any, placement: Placement, shown: int = 0) -> list[LayerData]:
    """Overlays of a finished batch prediction (``open_prediction`` result), read lazily with dask."""
    import dask.array as da

    levels = range(pred.num_levels)
    probs = [da.from_zarr(pred.probs(k)) for k in levels]
    probs = [p.rechunk({0: -1}) for p in probs]  # cam_display needs every channel of a block
    cams = [
        [p.map_blocks(cam_display, c, drop_axis=0, dtype=np.uint8) for p in probs]
        for c in range(pred.classes.num_classes)
    ]
    mask = [da.from_zarr(pred.mask(k)) + np.uint8(MASK_OFFSET) for k in levels]
    return overlay_layer_data(cams, mask, pred.classes, placement, shown, suffix=" (batch)")
