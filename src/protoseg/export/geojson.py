"""Class masks <-> GeoJSON that QuPath imports as classified objects (one feature per connected object).

Each 4-connected region of a tissue class becomes one ``Polygon`` feature (holes as interior rings)
with QuPath's ``properties.objectType`` and ``classification`` {name, color}. Rings are traced along
pixel edges (marching squares, corners restored), so with no simplification rasterising back by pixel
centres returns the mask. ``simplify_um`` smooths the pixel staircases with shapely's coverage
simplification (boundaries shared by two classes stay gap- and overlap-free) and ``min_area_um2`` drops
specks and fills small holes. Coordinates are level-0 slide pixels: mask pixel (row, col) covers x in
[col, col+1) * factor + offset_x, likewise for y.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.export.errors import ExportError

logger = logging.getLogger(__name__)

#: Defaults of ``protoseg export --format geojson`` and the Predict widget: smooth pixel staircases
#: (tolerance in µm) and drop objects / fill holes smaller than about one cell (µm²).
DEFAULT_SIMPLIFY_UM = 2.0
DEFAULT_MIN_AREA_UM2 = 50.0


def _corners(contour: np.ndarray) -> np.ndarray:
    """Marching-squares contour of a binary image (row, col; closed) -> its pixel-edge corner points."""
    pts = contour[:-1]
    nxt = np.roll(pts, -1, axis=0)
    horiz = np.isclose(pts[:, 0] % 1, 0.5)  # midpoint of a horizontal pixel edge: row half-integer
    turn = horiz != np.roll(horiz, -1)
    a, b, ha = pts[turn], nxt[turn], horiz[turn]
    rows = np.where(ha, a[:, 0], b[:, 0])
    cols = np.where(ha, b[:, 1], a[:, 1])
    return np.stack([rows, cols], axis=1)


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))


def _component_polygons(binary: np.ndarray, min_pixels: int, min_hole_pixels: float) -> list[Any]:
    """Shapely polygons (mask pixel-edge coordinates, x = column) of the 4-connected regions of ``binary``.

    Regions under ``min_pixels`` pixels and holes under ``min_hole_pixels`` are dropped; a ring that
    touches itself at a corner (diagonal pixels) is repaired with ``make_valid`` into valid polygons.
    """
    import shapely
    from scipy import ndimage
    from skimage.measure import find_contours

    labels, n = ndimage.label(binary)
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    out = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None or sizes[i] < max(1, min_pixels):
            continue
        comp = labels[sl] == i
        oy, ox = sl[0].start, sl[1].start
        rings = []
        for contour in find_contours(np.pad(comp, 1).astype(np.float32), 0.5):
            rc = _corners(contour)
            # corner (r, c) in padded-crop centre coordinates -> pixel-edge coordinates of the full mask
            rings.append(np.stack([rc[:, 1] - 0.5 + ox, rc[:, 0] - 0.5 + oy], axis=1))
        areas = [abs(_signed_area(r)) for r in rings]
        outer = int(np.argmax(areas))
        holes = [r for j, r in enumerate(rings) if j != outer and areas[j] >= min_hole_pixels]
        parts = _valid_parts(shapely.Polygon(rings[outer], holes))
        if min_hole_pixels > 0:  # repairs turn pockets pinched off the outline into holes: filter them too
            parts = [_without_small_holes(p, min_hole_pixels) for p in parts]
        out.extend(parts)
    return out


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
) -> dict[str, Any]:
    """FeatureCollection with one QuPath annotation ``Polygon`` per connected object of each tissue class.

    ``mpp`` is µm per output coordinate unit (level-0 slide pixel); it is needed when ``simplify_um``
    (staircase smoothing tolerance, µm) or ``min_area_um2`` (objects dropped and holes filled below this
    area) is non-zero. With both 0 the outlines follow pixel edges exactly. Every geometry is valid.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ExportError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    tol_px, min_px = _pixel_thresholds(factor, mpp, simplify_um, min_area_um2)
    objects: list[tuple[int, Any]] = []
    for idx in range(classes.num_classes):
        min_pixels_idx = max(int(min_pixels), int(np.ceil(min_px)))
        objects.extend((idx, p) for p in _component_polygons(mask == idx, min_pixels_idx, min_px))
    n_before = len(objects)
    if tol_px > 0:
        simple = _simplify([p for _, p in objects], tol_px)
        objects = [(idx, q) for (idx, _), s in zip(objects, simple) for q in _valid_parts(s)]
    features = []
    for idx, poly in objects:
        name, color = classes.names[idx], classes.colors[idx]
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "Polygon", "coordinates": _rings(poly, factor, offset)},
                "properties": {
                    "objectType": "annotation",
                    "classification": {"name": name, "color": list(color)},
                    "isLocked": False,
                    "class_index": idx,
                },
            }
        )
    logger.info(
        "GeoJSON: %d objects (%d before simplification), tolerance %.3g px, min area %.3g px",
        len(features),
        n_before,
        tol_px,
        min_px,
    )
    return {"type": "FeatureCollection", "features": features}


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
