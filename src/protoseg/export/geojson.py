"""Class masks <-> GeoJSON that QuPath imports as classified objects (one feature per connected object).

Each 4-connected region of a tissue class becomes one ``Polygon`` feature (holes as interior rings),
polygonised along pixel edges by ``rasterio.features.shapes``, so with no simplification rasterising back
by pixel centres returns the mask. Features carry QuPath's ``id`` (a UUID derived from the object),
``properties.objectType`` (annotation or detection), ``classification`` {name, color} and
``measurements`` (area, perimeter; ``protoseg.data.qupath``). ``simplify_um`` smooths the pixel staircases
with shapely's coverage simplification (boundaries shared by two classes stay gap- and overlap-free) and
``min_area_um2`` drops specks and fills small holes. Coordinates are level-0 slide pixels: mask pixel
(row, col) covers x in [col, col+1) * factor + offset_x, likewise for y.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.data import qupath
from protoseg.data.qupath import ObjectType
from protoseg.export.errors import ExportError

logger = logging.getLogger(__name__)

#: Defaults of ``protoseg export --format geojson`` and the Predict widget: smooth pixel staircases
#: (tolerance in µm) and drop objects / fill holes smaller than about one cell (µm²).
DEFAULT_SIMPLIFY_UM = 2.0
DEFAULT_MIN_AREA_UM2 = 50.0


#: dtypes ``rasterio.features.shapes`` polygonises; other integer masks are converted to int32.
_SHAPES_DTYPES = ("uint8", "uint16", "int16", "int32")


def _shoelace(ring: np.ndarray) -> float:
    """Unsigned area of a closed ring (N, 2)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def _value_polygons(
    labels: np.ndarray, valid: np.ndarray, min_pixels: int, min_hole_pixels: float
) -> list[tuple[int, Any]]:
    """(value, shapely polygon) of each 4-connected region of equal ``labels`` where ``valid``, sorted by value
    then position; pixel-edge coordinates (x = column). Polygonised by ``rasterio.features.shapes``.

    Regions under ``min_pixels`` pixels and holes under ``min_hole_pixels`` are dropped; a ring that touches
    itself at a corner (diagonal pixels) is repaired with ``make_valid`` into valid polygons.
    """
    import shapely
    from rasterio.features import shapes

    if labels.dtype.name not in _SHAPES_DTYPES:
        labels = labels.astype(np.int32)
    found: list[tuple[tuple[int, float, float], Any]] = []
    for geom, value in shapes(np.ascontiguousarray(labels), mask=np.asarray(valid, bool), connectivity=4):
        rings = [np.asarray(r, dtype=np.float64) for r in geom["coordinates"]]
        areas = [_shoelace(r) for r in rings]
        if areas[0] - sum(areas[1:]) < max(1, min_pixels):  # polygon area = pixel count
            continue
        holes = [r for r, a in zip(rings[1:], areas[1:]) if a >= min_hole_pixels]
        lo = rings[0].min(axis=0)
        found.append(((int(value), float(lo[1]), float(lo[0])), shapely.Polygon(rings[0], holes)))
    found.sort(key=lambda kp: kp[0])
    polys = np.array([p for _, p in found], dtype=object)
    ok = shapely.is_valid(polys) if len(polys) else np.zeros(0, bool)
    out = []
    for (key, poly), good in zip(found, ok):
        if good:
            out.append((key[0], poly))
            continue
        parts = _valid_parts(poly)  # self-touching ring split; pinched-off pockets may become small holes
        out.extend((key[0], _without_small_holes(q, min_hole_pixels) if min_hole_pixels > 0 else q) for q in parts)
    return out


def _component_polygons(binary: np.ndarray, min_pixels: int, min_hole_pixels: float) -> list[Any]:
    """Shapely polygons (mask pixel-edge coordinates, x = column) of the 4-connected regions of ``binary``."""
    binary = np.asarray(binary, bool)
    return [p for _, p in _value_polygons(binary.view(np.uint8), binary, min_pixels, min_hole_pixels)]


def _without_small_holes(poly: Any, min_area: float) -> Any:
    """``poly`` with the interior rings smaller than ``min_area`` filled."""
    import shapely

    keep = [r for r in poly.interiors if shapely.Polygon(r).area >= min_area]
    return poly if len(keep) == len(poly.interiors) else shapely.Polygon(poly.exterior, keep)


def _valid_parts(geom: Any) -> list[Any]:
    """The polygons of ``geom`` made valid (self-touching rings split), empty parts dropped."""
    import shapely

    if not geom.is_valid:
        geom = shapely.make_valid(geom)
    parts = shapely.get_parts(geom)
    polys = []
    for p in parts:
        if p.geom_type == "Polygon" and not p.is_empty and p.area > 0:
            polys.append(p)
        elif p.geom_type in ("MultiPolygon", "GeometryCollection"):
            polys.extend(_valid_parts(p))
    return polys


def _simplify(polys: list[Any], tolerance_px: float) -> list[Any]:
    """Coverage simplification of all classes' polygons together (shared edges stay shared), made valid."""
    import shapely

    if not polys or tolerance_px <= 0:
        return polys
    # every pixel corner on a boundary becomes a vertex, so edges shared by two polygons match exactly
    dense = shapely.segmentize(np.asarray(polys, dtype=object), 1.0)
    simple = shapely.coverage_simplify(dense, tolerance_px)
    return list(simple)


def _coords(ring: Any, factor: float, offset: tuple[float, float]) -> list[list[float | int]]:
    xy = np.round(np.asarray(ring.coords, dtype=np.float64) * factor + np.asarray(offset, np.float64), 4)
    return [[_num(x), _num(y)] for x, y in xy]


def _num(v: float) -> float | int:
    r = float(v)
    return int(r) if r.is_integer() else r


def _rings(poly: Any, factor: float, offset: tuple[float, float]) -> list[list[list[float | int]]]:
    """GeoJSON rings (exterior counter-clockwise in x/y, holes clockwise), closed, in output coordinates."""
    from shapely.geometry.polygon import orient

    p = orient(poly, sign=1.0)
    return [_coords(p.exterior, factor, offset), *(_coords(r, factor, offset) for r in p.interiors)]


def _pixel_thresholds(factor: float, mpp: float | None, simplify_um: float, min_area_um2: float) -> tuple[float, float]:
    """(simplify tolerance in mask pixels, minimum area in mask pixels) from µm settings."""
    if simplify_um < 0 or min_area_um2 < 0:
        raise ExportError(f"simplify ({simplify_um} µm) and min area ({min_area_um2} µm²) must be >= 0")
    if (simplify_um or min_area_um2) and not (mpp and mpp > 0):
        raise ExportError(
            "GeoJSON simplification and minimum area are in µm: pass mpp (µm per slide pixel), "
            "or set both to 0 for exact pixel outlines"
        )
    px_um = float(mpp or 1.0) * float(factor)  # µm per mask pixel
    return simplify_um / px_um, min_area_um2 / (px_um * px_um)


def class_polygons(
    binary: np.ndarray,
    factor: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    min_pixels: int = 0,
) -> list[list[list[list[float]]]]:
    """Polygons (exterior + holes, GeoJSON rings) of the 4-connected regions of a boolean image."""
    return [_rings(p, factor, offset) for p in _component_polygons(np.asarray(binary, bool), min_pixels, 0)]


def as_object_type(value: ObjectType | str) -> ObjectType:
    """``value`` as an :class:`ObjectType` ("annotation" or "detection"); anything else raises ExportError."""
    try:
        return ObjectType(value)
    except ValueError:
        raise ExportError(
            f"unknown QuPath object type {value!r}; choose {' or '.join(t.value for t in ObjectType)}"
        ) from None


def mask_to_geojson(
    mask: np.ndarray,
    classes: ClassSpec,
    factor: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    min_pixels: int = 0,
    *,
    mpp: float | None = None,
    simplify_um: float = 0.0,
    min_area_um2: float = 0.0,
    object_type: ObjectType | str = ObjectType.ANNOTATION,
    slide: str = "",
) -> dict[str, Any]:
    """FeatureCollection with one QuPath ``Polygon`` object per connected region of each tissue class.

    ``mpp`` is µm per output coordinate unit (level-0 slide pixel); it is needed when ``simplify_um``
    (staircase smoothing tolerance, µm) or ``min_area_um2`` (objects dropped and holes filled below this
    area) is non-zero, and gives the measurements in µm (else px). With both 0 the outlines follow pixel
    edges exactly. Every geometry is valid. Objects are QuPath ``object_type`` ("annotation" or
    "detection") with a ``classification``, ``measurements`` (area, perimeter) and an ``id`` derived from
    ``slide``, class and outline (``protoseg.data.qupath``).
    """
    kind = as_object_type(object_type)
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ExportError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    tol_px, min_px = _pixel_thresholds(factor, mpp, simplify_um, min_area_um2)
    min_pixels_all = max(int(min_pixels), int(np.ceil(min_px)))
    valid = (mask >= 0) & (mask < classes.num_classes)
    objects = _value_polygons(mask, valid, min_pixels_all, min_px)
    n_before = len(objects)
    if tol_px > 0:
        simple = _simplify([p for _, p in objects], tol_px)
        objects = [(idx, q) for (idx, _), s in zip(objects, simple) for q in _valid_parts(s)]
    features = [_feature(idx, poly, classes, kind, factor, offset, mpp) for idx, poly in objects]
    keys = [
        qupath.object_key(slide, [classes.names[i]], f["geometry"]["coordinates"])
        for (i, _), f in zip(objects, features)
    ]
    for feature, fid in zip(features, qupath.stable_ids(keys)):
        feature["id"] = fid
    logger.info(
        "GeoJSON: %d %s objects (%d before simplification), tolerance %.3g px, min area %.3g px",
        len(features),
        kind.value,
        n_before,
        tol_px,
        min_px,
    )
    return {"type": "FeatureCollection", "features": features}


def _feature(
    idx: int,
    poly: Any,
    classes: ClassSpec,
    kind: ObjectType,
    factor: float,
    offset: tuple[float, float],
    mpp: float | None,
) -> dict[str, Any]:
    """One QuPath object of class ``idx`` (its ``id`` is added by the caller)."""
    geometry = {"type": "Polygon", "coordinates": _rings(poly, factor, offset)}
    return {
        "type": "Feature",
        "geometry": geometry,
        "properties": {
            "objectType": kind.value,
            "classification": qupath.classification([classes.names[idx]], classes.colors[idx]),
            "isLocked": False,
            "measurements": qupath.measurements(geometry, mpp),
            "class_index": idx,
        },
    }


def write_geojson(collection: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a FeatureCollection as compact JSON; an unwritable path raises ``ExportError``."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(collection, separators=(",", ":")))
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path.") from exc
    return path


def load_geojson_mask(
    source: dict[str, Any] | str | os.PathLike[str],
    shape: tuple[int, int],
    classes: ClassSpec,
    factor: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise (by pixel centres) a FeatureCollection back to a uint8 (H, W) class mask.

    Each polygon is burnt inside its own bounding box (milliseconds per polygon on any mask size);
    later features win where they overlap.
    """
    doc = source if isinstance(source, dict) else json.loads(Path(source).read_text())
    mask = np.full(shape, classes.background_index, np.uint8)
    lookup = {n: i for i, n in enumerate(classes.names)}
    for feat in doc.get("features", []):
        props = feat.get("properties") or {}
        name = (props.get("classification") or {}).get("name", props.get("name"))
        if name not in lookup:
            raise ExportError(f"GeoJSON feature class {name!r} is not one of {list(classes.names)}")
        geom = feat.get("geometry") or {}
        polys = geom.get("coordinates", [])
        if geom.get("type") == "Polygon":
            polys = [polys]
        elif geom.get("type") != "MultiPolygon":
            raise ExportError(f"unsupported geometry {geom.get('type')!r}; expected Polygon or MultiPolygon")
        for poly in polys:
            _burn(mask, poly, lookup[name], factor, offset)
    return mask


def _burn(mask: np.ndarray, rings: list, value: int, factor: float, offset: tuple[float, float]) -> None:
    """Write ``value`` into the mask pixels whose centres lie inside the polygon (exterior minus holes)."""
    from skimage.draw import polygon

    inside: np.ndarray | None = None
    r0 = c0 = 0
    for k, ring in enumerate(rings):
        xy = (np.asarray(ring, dtype=np.float64) - np.asarray(offset)) / factor - 0.5  # pixel centres at integers
        if xy.ndim != 2 or xy.shape[0] < 3 or xy.shape[1] < 2 or not np.isfinite(xy).all():
            raise ExportError("GeoJSON polygon rings must be lists of at least 3 finite [x, y] positions")
        if k == 0:  # rasterise inside the exterior's bounding box only, not a full-size image per ring
            lo = np.maximum(np.floor(xy[:, :2].min(axis=0)), 0).astype(np.int64)
            hi = np.minimum(np.ceil(xy[:, :2].max(axis=0)) + 1, (mask.shape[1], mask.shape[0])).astype(np.int64)
            (c0, r0), (c1, r1) = lo, hi
            if c0 >= c1 or r0 >= r1:
                return
            inside = np.zeros((r1 - r0, c1 - c0), bool)
        assert inside is not None
        rr, cc = polygon(xy[:, 1] - r0, xy[:, 0] - c0, inside.shape)
        inside[rr, cc] = k == 0  # the exterior sets pixels, holes clear them
    if inside is not None:
        view = mask[r0 : r0 + inside.shape[0], c0 : c0 + inside.shape[1]]
        view[inside] = value
