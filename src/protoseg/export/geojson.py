"""Class masks <-> GeoJSON polygons that QuPath imports as classified annotations.

Each tissue class becomes one ``MultiPolygon`` feature (one polygon per 4-connected region,
holes as interior rings) with QuPath's ``properties.objectType``/``classification`` (name and RGB
colour). Rings follow pixel edges exactly (marching-squares contours with corners restored), so
rasterising back by pixel centres returns the mask. Coordinates are level-0 slide pixels:
mask pixel (row, col) covers x in [col, col+1) * factor + offset_x, likewise for y.
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


def _ring(corners_rc: np.ndarray, oy: float, ox: float, factor: float, offset: tuple[float, float], ccw: bool) -> list:
    # corner (r, c) in padded-crop centre coordinates -> pixel-edge coordinates of the full mask
    xy = np.stack([corners_rc[:, 1] - 1 + 0.5 + ox, corners_rc[:, 0] - 1 + 0.5 + oy], axis=1)
    if (_signed_area(xy) > 0) != ccw:
        xy = xy[::-1]
    xy = xy * factor + np.asarray(offset, dtype=np.float64)
    pts = [[_num(x), _num(y)] for x, y in xy]
    return [*pts, pts[0]]


def _num(v: float) -> float | int:
    r = round(float(v), 6)
    return int(r) if r.is_integer() else r


def class_polygons(
    binary: np.ndarray, factor: float = 1.0, offset: tuple[float, float] = (0.0, 0.0), min_pixels: int = 0
) -> list[list[list[list[float]]]]:
    """Polygons (exterior + holes, GeoJSON rings) of the 4-connected regions of a boolean image."""
    from scipy import ndimage
    from skimage.measure import find_contours

    labels, _ = ndimage.label(binary)
    polys = []
    for i, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        comp = labels[sl] == i
        if min_pixels and comp.sum() < min_pixels:
            continue
        rings = [_corners(c) for c in find_contours(np.pad(comp, 1).astype(np.float32), 0.5)]
        areas = [_signed_area(r[:, ::-1]) for r in rings]  # (x=col, y=row)
        outer = int(np.argmax(np.abs(areas)))
        oy, ox = sl[0].start, sl[1].start
        poly = [_ring(rings[outer], oy, ox, factor, offset, ccw=True)]
        poly += [_ring(r, oy, ox, factor, offset, ccw=False) for j, r in enumerate(rings) if j != outer]
        polys.append(poly)
    return polys


def mask_to_geojson(
    mask: np.ndarray,
    classes: ClassSpec,
    factor: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
    min_pixels: int = 0,
) -> dict[str, Any]:
    """FeatureCollection with one QuPath-style MultiPolygon annotation per tissue class present."""
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ExportError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    features = []
    for idx, (name, color) in enumerate(zip(classes.names, classes.colors)):
        polys = class_polygons(mask == idx, factor, offset, min_pixels)
        if not polys:
            continue
        features.append(
            {
                "type": "Feature",
                "geometry": {"type": "MultiPolygon", "coordinates": polys},
                "properties": {
                    "objectType": "annotation",
                    "name": name,
                    "classification": {"name": name, "color": list(color)},
                    "isLocked": False,
                    "class_index": idx,
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_geojson(collection: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(collection))
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path.") from exc
    return path


def _fill(ring: list, shape: tuple[int, int], factor: float, offset: tuple[float, float]) -> np.ndarray:
    from skimage.draw import polygon

    xy = (np.asarray(ring, dtype=np.float64) - np.asarray(offset)) / factor
    out = np.zeros(shape, bool)
    rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)  # pixel centres sit at integer coords
    out[rr, cc] = True
    return out


def load_geojson_mask(
    source: dict[str, Any] | str | os.PathLike[str],
    shape: tuple[int, int],
    classes: ClassSpec,
    factor: float = 1.0,
    offset: tuple[float, float] = (0.0, 0.0),
) -> np.ndarray:
    """Rasterise (by pixel centres) a FeatureCollection back to a uint8 (H, W) class mask."""
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
            region = _fill(poly[0], shape, factor, offset)
            for hole in poly[1:]:
                region &= ~_fill(hole, shape, factor, offset)
            mask[region] = lookup[name]
    return mask
