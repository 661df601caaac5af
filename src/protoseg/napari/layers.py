"""Prediction overlays as napari layer data (Qt-free): lazy per-class CAM images and a class-mask Labels
pyramid that never block the caller, batch OME-Zarr results as layers, whole-slide runs with cancel, exports.

Mask display convention: napari Labels treat 0 as transparent, while protoseg masks use 0..C-1 for the
tissue classes and C for background. Overlays therefore show ``mask + 1`` (:data:`MASK_OFFSET`): label
c+1 has the colour of class c, label C+1 (background) is transparent and label 0 marks chunks that are
still being computed (also transparent).
"""

from __future__ import annotations

import logging
import shutil
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.errors import ProtosegError
from protoseg.export.errors import ExportError

logger = logging.getLogger(__name__)

MASK_OFFSET = 1
LayerData = tuple[Any, dict[str, Any], str]
Key = tuple[int, int, int]  # (level, chunk row, chunk col)


# ---- placement and colours ---------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """World ``scale``/``translate`` (row, col) of prediction level 0 so overlays sit on the slide layer."""

    scale: tuple[float, float]
    translate: tuple[float, float]
    units: tuple[str, ...] | None = None

    @classmethod
    def on_slide(cls, slide_scale: Any, slide_translate: Any, factor: float, units: Any = None) -> "Placement":
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


# ---- background chunk computation --------------------------------------------------------------
class _Missing(Exception):
    pass


def _raise_missing() -> Any:
    raise _Missing


class ChunkScheduler:
    """Computes chunks of a ``LazyPrediction`` in one background thread, most recently requested first.

    ``get`` never computes: it returns a cached chunk or None after queueing it, so napari's (possibly
    synchronous) slicing never waits for the model. A coarse chunk is queued behind its four finer
    chunks, so every job is one model chunk at most and newer requests (the current view) overtake.
    ``on_ready()`` is called from the worker thread after each computed chunk.
    """

    def __init__(self, lazy: Any, on_ready: Callable[[], None] | None = None, max_pending: int = 4096) -> None:
        self.lazy, self.on_ready, self.max_pending = lazy, on_ready, int(max_pending)
        self._pending: OrderedDict[Key, None] = OrderedDict()
        self._expanded: set[Key] = set()
        self._failed: set[Key] = set()
        self._cond = threading.Condition()
        self._busy = False
        self._closed = False
        self._thread: threading.Thread | None = None
        self.computed = 0
        self.last_error: str | None = None

    # LazyPrediction caches chunks under ("chunk", level, row, col): peek there without computing.
    def cached(self, level: int, cy: int, cx: int) -> Any | None:
        cache, key = self.lazy.cache, ("chunk", level, cy, cx)
        if key not in cache:
            return None
        try:
            return cache.get(key, _raise_missing)
        except _Missing:  # evicted meanwhile
            return None

    def get(self, level: int, cy: int, cx: int) -> Any | None:
        """The chunk if already computed, else None (and the chunk is queued)."""
        data = self.cached(level, cy, cx)
        if data is None:
            self.request((level, cy, cx))
        return data

    def request(self, key: Key) -> None:
        with self._cond:
            if self._closed or key in self._failed:
                return
            self._pending[key] = None
            self._pending.move_to_end(key)
            while len(self._pending) > self.max_pending:
                self._pending.popitem(last=False)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="protoseg-overlay", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def _children(self, key: Key) -> list[Key]:
        level, cy, cx = key
        rows, cols = self.lazy.layout.chunk_grid(level - 1).shape
        return [(level - 1, r, c) for r in (2 * cy, 2 * cy + 1) for c in (2 * cx, 2 * cx + 1) if r < rows and c < cols]

    def _next(self) -> Key | None:
        with self._cond:
            while not self._pending and not self._closed:
                self._busy = False
                self._cond.notify_all()
                self._cond.wait()
            if self._closed:
                return None
            self._busy = True
            return self._pending.popitem(last=True)[0]

    def _run(self) -> None:
        while (key := self._next()) is not None:
            if self.cached(*key) is not None:
                continue
            if key[0] > 0 and self._defer(key):
                continue
            try:
                self.lazy.chunk(*key)
            except Exception as exc:  # noqa: BLE001 - reported through last_error, never kills the viewer
                logger.warning("overlay chunk %s failed: %s", key, exc)
                self._failed.add(key)
                self.last_error = f"{type(exc).__name__}: {exc}"
            else:
                self.computed += 1
            if self.on_ready is not None:
                self.on_ready()

    def _defer(self, key: Key) -> bool:
        """Queue a coarse chunk behind its missing finer chunks; False when it can be computed now."""
        missing = [k for k in self._children(key) if self.cached(*k) is None]
        if any(k in self._failed for k in missing):
            self._failed.add(key)
            return True
        with self._cond:
            fresh = [k for k in missing if k not in self._pending]
        if not missing or (fresh and key in self._expanded):  # children computed but evicted: do it in one go
            return False
        if fresh:
            self._expanded.add(key)
        for k in [key, *missing]:  # children end on top: computed first
            self.request(k)
        return True

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Block until nothing is queued or computing (tests, scripts); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._closed or (not self._pending and not self._busy), timeout)

    def close(self) -> None:
        """Drop queued chunks and stop the worker thread (after its current chunk)."""
        with self._cond:
            self._closed = True
            self._pending.clear()
            self._cond.notify_all()


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
                src = data.mask if self.channel is None else data.probs[self.channel]
                ay0, ay1 = max(y0, cy * c), min(y1, cy * c + src.shape[0])
                ax0, ax1 = max(x0, cx * c), min(x1, cx * c + src.shape[1])
                block = src[ay0 - cy * c : ay1 - cy * c, ax0 - cx * c : ax1 - cx * c]
                out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = block + np.uint8(self.offset)
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
    cams: list[list[Any]], mask: list[Any], classes: ClassSpec, placement: Placement, shown: int, suffix: str = "",
) -> list[LayerData]:
    """napari layer tuples: one additive CAM image per class (only ``shown`` visible) + the mask Labels."""
    multi = len(mask) > 1
    out: list[LayerData] = []
    for c, (name, rgb) in enumerate(zip(classes.names, classes.colors)):
        out.append((cams[c] if multi else cams[c][0], {
            "name": f"{name} CAM{suffix}", "colormap": class_colormap(name, rgb), "blending": "additive",
            "contrast_limits": (0, 255), "visible": c == shown, "multiscale": multi, **placement.kwargs(),
            "metadata": {"protoseg_overlay": {"kind": "cam", "class": name, "index": c}},
        }, "image"))
    out.append((mask if multi else mask[0], {
        "name": f"class mask{suffix}", "colormap": mask_colormap(classes), "features": mask_features(classes),
        "opacity": 0.6, "multiscale": multi, **placement.kwargs(),
        "metadata": {"protoseg_overlay": {"kind": "mask", "offset": MASK_OFFSET}},
    }, "labels"))
    return out


def lazy_layer_data(scheduler: ChunkScheduler, classes: ClassSpec, placement: Placement, shown: int = 0) -> list[LayerData]:
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
    cams = [[p[c] for p in probs] for c in range(pred.classes.num_classes)]
    mask = [da.from_zarr(pred.mask(k)) + np.uint8(MASK_OFFSET) for k in levels]
    return overlay_layer_data(cams, mask, pred.classes, placement, shown, suffix=" (batch)")


# ---- whole-slide batch -----------------------------------------------------------------------------
class PredictionCancelled(ProtosegError):
    """The whole-slide run was cancelled; finished chunks are kept and a new run resumes from them."""


class CancelLike(Protocol):
    @property
    def cancelled(self) -> bool: ...


@dataclass(frozen=True)
class BatchOutcome:
    """Result of :func:`run_batch`: the output folder, the library's summary (None if cancelled), progress."""

    path: Path
    result: Any
    cancelled: bool
    done: int
    total: int


def run_batch(predictor: Any, slide: Any, out_dir: str | Path, *, report: Callable[[tuple[int, int]], None],
              cancel: CancelLike | None = None, **kwargs: Any) -> BatchOutcome:
    """``predict_slide_to_omezarr`` (resuming) reporting (done, total); stops at the next chunk once cancelled."""
    from protoseg.infer import predict_slide_to_omezarr

    state = [0, 0]

    def progress(done: int, total: int) -> None:
        state[:] = [int(done), int(total)]
        report((int(done), int(total)))
        if cancel is not None and cancel.cancelled:
            raise PredictionCancelled("whole-slide prediction cancelled; run it again to resume")

    try:
        result = predict_slide_to_omezarr(predictor, slide, out_dir, resume=True, progress=progress, **kwargs)
    except PredictionCancelled:
        logger.info("batch prediction to %s cancelled at %d/%d chunks", out_dir, *state)
        return BatchOutcome(Path(out_dir), None, True, state[0], state[1])
    return BatchOutcome(Path(out_dir), result, False, result.chunks_total, result.chunks_total)


# ---- exports -----------------------------------------------------------------------------------------
EXPORT_KINDS = ("ome-zarr", "ome-tiff", "geojson", "areas")


def export_result(zarr_path: str | Path, kind: str, out: str | Path) -> Path:
    """Write one export of a finished batch prediction: a copy of the OME-Zarr folder or a library export."""
    from protoseg.export import export_prediction

    if kind not in EXPORT_KINDS:
        raise ExportError(f"unknown export {kind!r}; choose one of {', '.join(EXPORT_KINDS)}")
    src, out = Path(zarr_path), Path(out)
    if kind != "ome-zarr":
        return export_prediction(src, kind, out)
    from protoseg.infer.omezarr import open_prediction

    if not open_prediction(src).complete:
        raise ExportError(f"{src} is an unfinished prediction; run 'Whole slide' again (it resumes) first.")
    if out.resolve() == src.resolve():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose a new folder name (e.g. ending .zarr)")
    try:
        shutil.copytree(src, out, dirs_exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot copy the prediction to {out} ({exc}); choose a writable location.") from exc
    return out


def read_area_csv(path: str | Path) -> list[tuple[str, float, float | None]]:
    """(class, area mm², fraction of tissue or None for background) rows of an area CSV."""
    import csv

    with Path(path).open(newline="") as fh:
        return [(r["class"], float(r["area_mm2"]), float(r["tissue_fraction"]) if r["tissue_fraction"] else None)
                for r in csv.DictReader(fh)]
