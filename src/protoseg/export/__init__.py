"""Exports of predictions: OME-Zarr copies, pyramidal OME-TIFF masks, QuPath GeoJSON polygons, per-class
areas (mm²).

``export_prediction(zarr_path, fmt, out)`` turns a batch OME-Zarr (``protoseg.infer``) into any
:class:`ExportFormat`; the format modules also work on plain numpy masks.
"""

from __future__ import annotations

import logging
import os
from enum import StrEnum
from pathlib import Path

from protoseg.config_ranges import MIN_AREA_UM2, SIMPLIFY_UM, check_value
from protoseg.data.qupath import ObjectType
from protoseg.export.areas import AreaRow, class_areas, count_classes, read_area_csv, write_area_csv
from protoseg.export.errors import ExportError
from protoseg.export.geojson import (
    DEFAULT_MIN_AREA_UM2,
    DEFAULT_SIMPLIFY_UM,
    as_object_type,
    class_polygons,
    load_geojson_mask,
    mask_to_geojson,
    write_geojson,
)
from protoseg.export.ometiff import write_mask_ometiff
from protoseg.export.omezarr import copy_prediction
from protoseg.export.replace import check_file_output, sign_geojson, write_file_export

logger = logging.getLogger(__name__)

#: GeoJSON is built from the finest pyramid level with at most this many pixels (unless a level is given).
GEOJSON_MAX_PIXELS = 64 * 2**20


class ExportFormat(StrEnum):
    """What an export writes (``protoseg export --format`` and the Predict widget's export buttons)."""

    OME_ZARR = "ome-zarr"
    OME_TIFF = "ome-tiff"
    GEOJSON = "geojson"
    AREAS = "areas"


def export_format(fmt: ExportFormat | str) -> ExportFormat:
    """``fmt`` as an :class:`ExportFormat` ("ome-zarr", "ome-tiff", "geojson", "areas")."""
    try:
        return ExportFormat(fmt)
    except ValueError:
        raise ExportError(f"unknown export {fmt!r}; choose one of {', '.join(f.value for f in ExportFormat)}") from None


_SUFFIX = {
    ExportFormat.OME_ZARR: "-copy.zarr",
    ExportFormat.OME_TIFF: ".mask.ome.tif",
    ExportFormat.GEOJSON: ".geojson",
    ExportFormat.AREAS: ".areas.csv",
}


def default_output(zarr_path: str | os.PathLike[str], fmt: ExportFormat | str) -> Path:
    """``<name>-copy.zarr`` / ``<name>.mask.ome.tif`` / ``<name>.geojson`` / ``<name>.areas.csv`` next to
    ``<name>.zarr``."""
    p = Path(zarr_path)
    return p.with_name(p.name.removesuffix(".zarr") + _SUFFIX[export_format(fmt)])


def export_prediction(
    zarr_path: str | os.PathLike[str],
    fmt: ExportFormat | str,
    out: str | os.PathLike[str] | None = None,
    level: int | None = None,
    overwrite: bool = False,
    simplify_um: float = DEFAULT_SIMPLIFY_UM,
    min_area_um2: float = DEFAULT_MIN_AREA_UM2,
    object_type: ObjectType | str = ObjectType.ANNOTATION,
) -> Path:
    """Export a finished batch prediction folder; returns the written file (or folder, for OME-Zarr).

    GeoJSON: one QuPath object (``object_type`` "annotation" or "detection") per connected region, outlines
    simplified with tolerance ``simplify_um`` (µm), objects and holes under ``min_area_um2`` (µm²) dropped;
    0 and 0 give exact pixel outlines. Both must be finite and within ``protoseg.config_ranges``
    ``SIMPLIFY_UM`` / ``MIN_AREA_UM2`` (else ExportError).

    An unfinished or damaged prediction (unmarked chunks in ``done``, missing or unreadable chunk files)
    raises ``ExportError`` naming the chunk and the repair. ``out`` is replaced only when it is an export
    protoseg wrote in the same format, or when ``overwrite`` (``--overwrite``).
    """
    from protoseg.infer.errors import OutputError
    from protoseg.infer.omezarr import open_prediction

    fmt = export_format(fmt)
    check_value("simplify_um (--simplify)", simplify_um, SIMPLIFY_UM, ExportError)
    check_value("min_area_um2 (--min-area)", min_area_um2, MIN_AREA_UM2, ExportError)
    shape_opts = (simplify_um, min_area_um2, as_object_type(object_type))
    try:
        return _export(open_prediction(zarr_path), zarr_path, fmt, out, level, overwrite, shape_opts)
    except OutputError as exc:
        raise ExportError(str(exc)) from exc


def _export(
    pred,
    zarr_path,
    fmt: ExportFormat,
    out,
    level: int | None,
    overwrite: bool,
    shape_opts: tuple[float, float, ObjectType],
) -> Path:
    from protoseg.infer.omezarr import CheckedArray, check_finished

    check_finished(pred)
    out = Path(out) if out is not None else default_output(zarr_path, fmt)
    n = pred.num_levels
    if level is not None and not 0 <= level < n:
        raise ExportError(f"level {level} does not exist; the prediction has levels 0..{n - 1}")
    if fmt is ExportFormat.OME_ZARR:
        return copy_prediction(zarr_path, out, overwrite=overwrite)

    def mask(k: int) -> CheckedArray:
        return CheckedArray(pred.mask(k), pred, f"mask/{k}")

    if fmt is ExportFormat.OME_TIFF:
        levels = [mask(k) for k in range(level or 0, n)]
        mpp = pred.level_mpp(level or 0)
        return write_file_export(
            out, fmt.value, lambda tmp: write_mask_ometiff(levels, tmp, mpp, pred.classes), overwrite
        )
    if fmt is ExportFormat.AREAS:
        lv = level or 0
        rows = class_areas(mask(lv), pred.level_mpp(lv), pred.classes)
        return write_file_export(out, fmt.value, lambda tmp: write_area_csv(rows, tmp), overwrite)
    check_file_output(out, fmt.value, overwrite)  # before the (long) polygon tracing
    if level is None:
        level = next((k for k in range(n) if pred.mask(k).size <= GEOJSON_MAX_PIXELS), n - 1)
        if level:
            logger.warning(
                "GeoJSON from pyramid level %d (vertices on a %dx coarser grid); pass --level 0 for full resolution",
                level,
                2**level,
            )
    factor = pred.scale * 2**level
    level_mpp = pred.level_mpp(level)
    collection = mask_to_geojson(
        mask(level)[...],
        pred.classes,
        factor=factor,
        mpp=level_mpp / factor if level_mpp else None,
        simplify_um=shape_opts[0],
        min_area_um2=shape_opts[1],
        object_type=shape_opts[2],
        slide=str(pred.attrs.get("slide") or ""),
    )
    signed = sign_geojson(collection)  # protoseg's marker: only such a file is replaced without --overwrite
    return write_file_export(out, fmt.value, lambda tmp: write_geojson(signed, tmp), overwrite)


__all__ = [
    "DEFAULT_MIN_AREA_UM2",
    "DEFAULT_SIMPLIFY_UM",
    "AreaRow",
    "ExportError",
    "ExportFormat",
    "ObjectType",
    "as_object_type",
    "class_areas",
    "class_polygons",
    "copy_prediction",
    "count_classes",
    "default_output",
    "export_format",
    "export_prediction",
    "load_geojson_mask",
    "mask_to_geojson",
    "read_area_csv",
    "write_area_csv",
    "write_geojson",
    "write_mask_ometiff",
]
