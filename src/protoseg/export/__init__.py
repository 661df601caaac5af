"""Exports of predictions: pyramidal OME-TIFF masks, QuPath GeoJSON polygons, per-class areas (mm²).

``export_prediction(zarr_path, fmt, out)`` turns a batch OME-Zarr (``protoseg.infer``) into any of
them; the format modules also work on plain numpy masks.
"""

from __future__ import annotations

import logging
import os
from enum import Enum
from pathlib import Path

from protoseg.export.areas import AreaRow, class_areas, count_classes, write_area_csv
from protoseg.export.errors import ExportError
from protoseg.export.geojson import class_polygons, load_geojson_mask, mask_to_geojson, write_geojson
from protoseg.export.ometiff import write_mask_ometiff

logger = logging.getLogger(__name__)

#: GeoJSON is built from the finest pyramid level with at most this many pixels (unless a level is given).
GEOJSON_MAX_PIXELS = 64 * 2**20


class ExportFormat(str, Enum):
    """What ``protoseg export`` writes."""

    OME_TIFF = "ome-tiff"
    GEOJSON = "geojson"
    AREAS = "areas"


_SUFFIX = {ExportFormat.OME_TIFF: ".mask.ome.tif", ExportFormat.GEOJSON: ".geojson", ExportFormat.AREAS: ".areas.csv"}


def default_output(zarr_path: str | os.PathLike[str], fmt: ExportFormat | str) -> Path:
    """``<name>.mask.ome.tif`` / ``<name>.geojson`` / ``<name>.areas.csv`` next to ``<name>.zarr``."""
    p = Path(zarr_path)
    return p.with_name(p.name.removesuffix(".zarr") + _SUFFIX[ExportFormat(fmt)])


def export_prediction(
    zarr_path: str | os.PathLike[str], fmt: ExportFormat | str, out: str | os.PathLike[str] | None = None,
    level: int | None = None,
) -> Path:
    """Export a batch prediction folder; returns the written file."""
    from protoseg.infer.omezarr import open_prediction

    fmt = ExportFormat(fmt)
    pred = open_prediction(zarr_path)
    if not pred.complete:
        raise ExportError(f"{zarr_path} is an unfinished prediction; re-run `protoseg predict` (it resumes) first.")
    out = Path(out) if out is not None else default_output(zarr_path, fmt)
    n = pred.num_levels
    if level is not None and not 0 <= level < n:
        raise ExportError(f"level {level} does not exist; the prediction has levels 0..{n - 1}")
    if fmt is ExportFormat.OME_TIFF:
        levels = [pred.mask(k) for k in range(level or 0, n)]
        return write_mask_ometiff(levels, out, pred.level_mpp(level or 0), pred.classes)
    if fmt is ExportFormat.AREAS:
        lv = level or 0
        return write_area_csv(class_areas(pred.mask(lv), pred.level_mpp(lv), pred.classes), out)
    if level is None:
        level = next((k for k in range(n) if pred.mask(k).size <= GEOJSON_MAX_PIXELS), n - 1)
        if level:
            logger.warning("GeoJSON from pyramid level %d (vertices on a %dx coarser grid); pass --level 0 "
                           "for full resolution", level, 2**level)
    mask = pred.mask(level)[...]
    collection = mask_to_geojson(mask, pred.classes, factor=pred.scale * 2**level)
    return write_geojson(collection, out)


__all__ = [
    "AreaRow", "ExportError", "ExportFormat", "class_areas", "class_polygons", "count_classes",
    "default_output", "export_prediction", "load_geojson_mask", "mask_to_geojson", "write_area_csv",
    "write_geojson", "write_mask_ometiff",
]
