"""napari reader: any slide protoseg can open becomes a lazy multiscale RGB layer in micrometres."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protoseg.slide import SlideError, is_rgb_slide_image, is_whole_slide_path, open_slide

logger = logging.getLogger(__name__)

LayerData = tuple[Any, dict[str, Any], str]


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return a reader when ``path`` is one slide protoseg can open or a protoseg prediction OME-Zarr, else
    None (napari uses another reader). Plain .tif/.png/.jpg count only when their header says RGB(A) slide."""
    if isinstance(path, list):
        if len(path) != 1:
            return None
        path = path[0]
    if str(path).rstrip("/").lower().endswith(".zarr"):
        from protoseg.infer.omezarr import read_protoseg_attrs

        return read_prediction if read_protoseg_attrs(Path(path)) is not None else None
    if is_whole_slide_path(path):
        return read_slide if _opens_as_slide(path) else None
    return read_slide if is_rgb_slide_image(path) else None  # plain types, header only: greyscale -> napari


def _opens_as_slide(path: str) -> bool:
    """Whether ``open_slide`` reads the whole-slide file ``path`` (a damaged or non-RGB file is left to others)."""
    try:
        slide = open_slide(path)
    except SlideError as exc:
        logger.info("protoseg cannot read %s: %s", path, exc)
        return False
    slide.close()
    return True


def slide_layer_data(path: str | Path) -> LayerData:
    """Layer data for one slide: progressive pyramid arrays, mpp as scale (µm) and slide facts in metadata.

    napari gets array-likes over the slide's own levels (``Slide.pyramid_arrays``: one backend read per
    slice, lazy 2x levels for slides with too few) rather than dask arrays: a dask compute imports
    dask.array and dask.distributed on the GUI thread at the first draw and adds per-call overhead to every
    slice. They are wrapped by ``protoseg.napari.progressive``: on the GUI thread a read never waits for
    pixels (see :func:`progressive_pyramid`); anywhere else it is exact.
    """
    slide = open_slide(path)
    pyramid = progressive_pyramid(slide)
    mpp = slide.mpp
    scale = (mpp, mpp) if mpp else (1.0, 1.0)
    metadata = {
        "protoseg": {
            "path": str(slide.path),
            "backend": str(getattr(slide.backend, "value", slide.backend)),
            "mpp": mpp,
            "objective_power": slide.objective_power,
            "level_dimensions": [tuple(d) for d in slide.level_dimensions],
            "level_downsamples": [float(d) for d in slide.level_downsamples],
        },
        "properties": dict(slide.properties),
    }
    kwargs: dict[str, Any] = {
        "name": Path(path).name,
        "rgb": True,
        "multiscale": len(pyramid) > 1,
        "scale": scale,
        "metadata": metadata,
        "contrast_limits": (0, 255),
    }
    if mpp:
        kwargs["units"] = ("um", "um")
    else:
        logger.warning("%s has no microns-per-pixel metadata: showing pixel units", path)
    data = pyramid if len(pyramid) > 1 else pyramid[0]
    return (data, kwargs, "image")


def progressive_pyramid(slide: Any) -> list[Any]:
    """``ProgressiveLevel`` arrays of ``slide``'s pyramid. Read from the Qt GUI thread they return at once
    (missing chunks show a coarser level, load in the background, then the layer refreshes) and the
    coarsest level starts loading now; with no Qt application (scripts, headless tests) reads are exact."""
    from protoseg.napari.progressive import ProgressiveLoader

    levels = [(array, chunk) for array, chunk, _ds in slide.pyramid_arrays()]
    try:
        from protoseg.napari.refresh import LayerRefresher, on_gui_thread
    except (ImportError, RuntimeError):  # no usable Qt binding: nothing to keep responsive
        return ProgressiveLoader(levels).arrays
    if not on_gui_thread():
        return ProgressiveLoader(levels).arrays
    refresher = LayerRefresher()
    loader = ProgressiveLoader(levels, on_ready=refresher.notify, nonblocking=on_gui_thread)
    refresher.attach(loader)  # napari's current viewer: the layer is found when it is inserted
    loader.prefetch()
    return loader.arrays


def read_slide(path: str | list[str]) -> list[LayerData]:
    """napari reader function."""
    if isinstance(path, list):
        return [slide_layer_data(p) for p in path]
    return [slide_layer_data(path)]


def prediction_layer_data(path: str | Path) -> list[LayerData]:
    """CAM images + class-mask Labels of a ``protoseg predict`` OME-Zarr, placed like its slide opened
    by this reader (µm when the slide file records its mpp, slide pixels otherwise)."""
    from protoseg.infer.omezarr import open_prediction
    from protoseg.napari.overlays import Placement, zarr_layer_data

    pred = open_prediction(path)
    file_mpp = None
    try:
        with open_slide(pred.attrs["slide"]) as slide:
            file_mpp = slide.mpp
    except (SlideError, KeyError, TypeError):
        logger.info("slide of %s not readable: placing the prediction in its own pixel grid", path)
    unit = (file_mpp, file_mpp) if file_mpp else (1.0, 1.0)
    placement = Placement.on_slide(unit, (0.0, 0.0), pred.scale, ("um", "um") if file_mpp else None)
    return _label_unfinished(pred, zarr_layer_data(pred, placement))


def _label_unfinished(pred: Any, layers: list[LayerData]) -> list[LayerData]:
    """Say so in each layer's name and metadata when the prediction is unfinished (chunks not yet written)."""
    from protoseg.infer.omezarr import unfinished_chunks

    try:
        todo, total = unfinished_chunks(pred)
    except Exception:  # noqa: BLE001 - a damaged record: the layers load lazily, say it is unfinished
        todo, total = 1, 0
    if not todo and pred.complete:
        return layers
    logger.warning("%s is an unfinished prediction (%d of %d chunks missing)", pred.path, todo, total)
    tag = f" [unfinished: {total - todo}/{total} chunks]" if total else " [unfinished]"
    out = []
    for data, kwargs, kind in layers:
        meta = dict(kwargs.get("metadata") or {})
        meta["protoseg_unfinished"] = {"chunks_done": total - todo, "chunks_total": total}
        out.append((data, {**kwargs, "name": f"{kwargs.get('name', pred.path.name)}{tag}", "metadata": meta}, kind))
    return out


def read_prediction(path: str | list[str]) -> list[LayerData]:
    """napari reader function for prediction folders."""
    paths = path if isinstance(path, list) else [path]
    return [ld for p in paths for ld in prediction_layer_data(p)]
