"""Class-tagged slide regions (polygons) and their GeoJSON / napari-shapes conversion."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.config_ranges import MPP, check_value
from protoseg.data.errors import RegionError
from protoseg.data.outline import bounded_outline, valid_shape
from protoseg.data.qupath import ObjectType, classification, measurements, object_key, split_derived, stable_ids

logger = logging.getLogger(__name__)


#: Largest |coordinate| a region may have (level-0 px); whole-slide images are far below 1e7 px a side.
MAX_COORDINATE = 1e9


@dataclass(frozen=True, eq=False)
class RegionAnnotation:
    """A polygon in level-0 slide pixels, (N, 2) in (x, y) order, tagged with the classes present."""

    polygon: np.ndarray
    classes: tuple[str, ...]
    slide_path: str

    def __post_init__(self) -> None:
        try:
            poly = np.array(self.polygon, dtype=np.float64)
        except (TypeError, ValueError):
            raise RegionError("a region polygon must be an (N>=3, 2) array of numbers (x, y)") from None
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise RegionError(f"a region polygon must be an (N>=3, 2) array of (x, y); got shape {poly.shape}")
        if not np.isfinite(poly).all():
            raise RegionError("a region polygon has non-finite coordinates (NaN or inf); fix the annotation")
        if np.abs(poly).max() > MAX_COORDINATE:
            raise RegionError(
                f"a region polygon has coordinates beyond ±{MAX_COORDINATE:g} px (max |value| "
                f"{np.abs(poly).max():g}); they must be level-0 pixels of its slide"
            )
        if len(poly) > 3 and np.allclose(poly[0], poly[-1]):
            poly = poly[:-1]  # drop the closing vertex of GeoJSON rings
        poly = bounded_outline(poly)  # simplified or refused when too long to tile or repair
        poly.setflags(write=False)
        object.__setattr__(self, "polygon", poly)
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "slide_path", str(self.slide_path))

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(xmin, ymin, xmax, ymax) in level-0 pixels."""
        (x0, y0), (x1, y1) = self.polygon.min(axis=0), self.polygon.max(axis=0)
        return float(x0), float(y0), float(x1), float(y1)


@dataclass(frozen=True)
class RegionSource:
    """Tagged slide regions plus the classes and patch resolution (µm/px) to sample them at."""

    name: str
    regions: tuple[RegionAnnotation, ...]
    classes: ClassSpec
    mpp: float
    fallback_mpp: float | None = None  # used for slides whose file records no mpp

    def __post_init__(self) -> None:
        check_value(f"{self.name}: patch mpp", self.mpp, MPP, RegionError)
        check_value(f"{self.name}: the slides' mpp", self.fallback_mpp, MPP, RegionError)


#: GeoJSON geometry types that carry no area: skipped with a warning (QuPath exports points and lines too).
NON_AREA_GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "GeometryCollection")


def _names(value: object, where: str) -> tuple[str, ...]:
    """Class names from ``"A;B"`` text or a list of texts."""
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(t.strip() for t in value.split(";") if t.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return tuple(v.strip() for v in value if v.strip())
    raise RegionError(f"{where}: class names must be text or a list of texts, got {value!r}")


def _tags(props: dict, where: str = "feature") -> tuple[str, ...]:
    """Classes of a feature: QuPath ``classification`` (``names`` list, else ``name`` split as QuPath splits
    a derived class "EPI: STR"), else protoseg's ``classes``."""
    cls = props.get("classification")
    if isinstance(cls, dict):
        return _names(cls.get("names"), where) or _derived(cls.get("name"), where)
    if cls:
        return _derived(cls, where)
    return _names(props.get("classes"), where)


def _derived(value: object, where: str) -> tuple[str, ...]:
    """Class names from QuPath class text: ``"EPI: STR"`` (derived class) or ``"A;B"``, or a list of texts."""
    return tuple(part for name in _names(value, where) for part in split_derived(name))


def _ring(ring: object, where: str) -> np.ndarray:
    """One linear ring as an (N, 2) float array of finite (x, y); z values are dropped."""
    try:
        arr = np.asarray(ring, dtype=np.float64)
    except (TypeError, ValueError):
        raise RegionError(f"{where}: coordinates must be [[x, y], ...] numbers") from None
    if arr.ndim != 2 or arr.shape[1] < 2 or len(arr) < 3:
        raise RegionError(f"{where}: a polygon ring needs at least 3 [x, y] positions; got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise RegionError(f"{where}: coordinates hold NaN or infinite values")
    return arr[:, :2]


def _rings(geometry: object, where: str) -> list[np.ndarray]:
    """Outer rings of a Polygon / MultiPolygon geometry (holes ignored); [] for point/line geometries."""
    if not isinstance(geometry, dict):
        raise RegionError(f"{where}: has no geometry object (got {geometry!r})")
    kind = geometry.get("type")
    if kind in NON_AREA_GEOMETRIES:
        logger.warning("%s: skipping a %s geometry: only Polygon and MultiPolygon regions are used", where, kind)
        return []
    if kind not in ("Polygon", "MultiPolygon"):
        raise RegionError(f"{where}: geometry type {kind!r} is not a GeoJSON Polygon or MultiPolygon")
    coords = geometry.get("coordinates")
    polys = [coords] if kind == "Polygon" else coords
    if not isinstance(polys, list) or not all(isinstance(p, list) and p for p in polys) or not polys:
        raise RegionError(f"{where}: {kind} coordinates must be a non-empty list of rings")
    if any(len(p) > 1 for p in polys):
        logger.warning("%s: polygon holes are ignored; only outer rings are used", where)
    return [_ring(p[0], where) for p in polys]


def _features(data: object, path: Path) -> list:
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise RegionError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    if not isinstance(features, list):
        raise RegionError(f"{path}: 'features' must be a list of Features")
    return features


def clip_to_slide(region: RegionAnnotation, size: tuple[int, int]) -> list[RegionAnnotation]:
    """The parts of ``region`` inside the slide's level-0 extent ``size`` (w, h): the region itself when it
    lies inside, clipped parts (with a warning) when it crosses the edge; RegionError when none is inside."""
    width, height = float(size[0]), float(size[1])
    x0, y0, x1, y1 = region.bounds
    if x0 >= 0 and y0 >= 0 and x1 <= width and y1 <= height:
        return [region]
    import shapely

    inside = shapely.intersection(valid_shape(region.polygon), shapely.box(0, 0, width, height))
    parts = [g for g in getattr(inside, "geoms", [inside]) if isinstance(g, shapely.Polygon) and g.area > 0]
    if not parts:
        raise RegionError(
            f"region {'+'.join(region.classes)} spans x {x0:g}..{x1:g}, y {y0:g}..{y1:g}, outside the slide "
            f"{region.slide_path} ({width:g} x {height:g} px); coordinates must be level-0 pixels of that slide"
        )
    logger.warning(
        "region %s reaches outside the slide %s (%g x %g px): clipped to the slide",
        "+".join(region.classes),
        region.slide_path,
        width,
        height,
    )
    return [RegionAnnotation(np.asarray(p.exterior.coords), region.classes, region.slide_path) for p in parts]


def load_regions_geojson(
    path: str | Path, slide_path: str | Path | None = None, slide_size: tuple[int, int] | None = None
) -> list[RegionAnnotation]:
    """Read tagged polygons from a (QuPath-style) GeoJSON file; ``slide_path`` overrides the file's.

    Each feature needs a Polygon/MultiPolygon geometry with finite coordinates and its classes
    (``classification`` name(s) or ``classes``); unclassified features and point/line geometries are
    skipped with a warning, anything else malformed is a RegionError naming the feature. With
    ``slide_size`` (level-0 w, h) polygons are clipped to the slide (warning) and ones outside refused.
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # a FIFO would block the read forever
        raise RegionError(f"{path} is not a regular file (a folder, FIFO or device); pass the GeoJSON file itself")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegionError(f"cannot read GeoJSON {path}: {exc}") from exc
    regions = []
    for i, feat in enumerate(_features(data, path)):
        where = f"{path}: feature {i}"
        if not isinstance(feat, dict):
            raise RegionError(f"{where} is not a GeoJSON Feature object (got {type(feat).__name__})")
        props = feat.get("properties") or {}
        if not isinstance(props, dict):
            raise RegionError(f"{where}: 'properties' must be an object, got {props!r}")
        tags = _tags(props, where)
        if not tags:
            logger.warning("%s has no classification/classes, skipped", where)
            continue
        sp = slide_path if slide_path is not None else props.get("slide_path")
        if sp is None:
            raise RegionError(
                f"{where} does not say which slide it belongs to; pass slide_path= or add properties.slide_path"
            )
        if not isinstance(sp, (str, Path)):
            raise RegionError(f"{where}: properties.slide_path must be a file path, got {sp!r}")
        for ring in _rings(feat.get("geometry"), where):
            try:
                region = RegionAnnotation(ring, tags, str(sp))
            except RegionError as exc:
                raise RegionError(f"{where}: {exc}") from None
            regions += clip_to_slide(region, slide_size) if slide_size is not None else [region]
    return regions


def save_regions_geojson(
    path: str | Path, regions: Sequence[RegionAnnotation], classes: ClassSpec | None = None, mpp: float | None = None
) -> Path:
    """Write regions as a GeoJSON FeatureCollection QuPath imports as annotations (``protoseg.data.qupath``).

    Each feature has a stable UUID ``id``, QuPath's ``classification`` (a region tagged with several classes
    is the derived class "A: B"; its classes are listed in ``names`` too), ``measurements`` (µm with ``mpp``, the
    slide's µm per level-0 pixel; px without) and protoseg's ``classes`` and ``slide_path``.
    """
    colours = dict(zip(classes.names, classes.colors)) if classes is not None else {}
    rings = [_closed_ring(r.polygon) for r in regions]
    ids = stable_ids(object_key(r.slide_path, r.classes, [ring]) for r, ring in zip(regions, rings))
    features = [_region_feature(r, ring, fid, colours, mpp) for r, ring, fid in zip(regions, rings, ids)]
    path = Path(path)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _closed_ring(polygon: np.ndarray) -> list[list[float]]:
    """A GeoJSON ring (first position repeated at the end) of an (N, 2) polygon."""
    return [[float(x), float(y)] for x, y in polygon] + [[float(polygon[0, 0]), float(polygon[0, 1])]]


def _region_feature(
    r: RegionAnnotation, ring: list[list[float]], fid: str, colours: dict[str, Any], mpp: float | None
) -> dict[str, Any]:
    """One region as a QuPath annotation feature."""
    geometry = {"type": "Polygon", "coordinates": [ring]}
    colour = colours.get(r.classes[0]) if r.classes else None
    # ``names`` always, as region files always had it (older protoseg reads it first)
    cls = {**classification(r.classes, colour), "names": list(r.classes)}
    return {
        "type": "Feature",
        "id": fid,
        "geometry": geometry,
        "properties": {
            "objectType": ObjectType.ANNOTATION.value,
            "classification": cls,
            "measurements": measurements(geometry, mpp),
            "classes": list(r.classes),
            "slide_path": r.slide_path,
        },
    }


def _scale_yx(scale: float | Sequence[float]) -> tuple[float, float]:
    s = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    sy, sx = (s[0], s[0]) if s.size == 1 else (s[-2], s[-1])
    if sy <= 0 or sx <= 0:
        raise RegionError(f"scale must be positive, got {scale}")
    return float(sy), float(sx)


def regions_from_napari(
    shapes_data: Sequence[np.ndarray],
    tags: Sequence[Sequence[str]],
    slide_path: str | Path,
    scale: float | Sequence[float] = 1.0,
) -> list[RegionAnnotation]:
    """Regions from napari Shapes data ((row, col) vertices in world units = pixels * ``scale``)."""
    if len(shapes_data) != len(tags):
        raise RegionError(f"{len(shapes_data)} shapes but {len(tags)} tag tuples; give one tag tuple per shape")
    sy, sx = _scale_yx(scale)
    out = []
    for verts, t in zip(shapes_data, tags):
        v = np.asarray(verts, dtype=np.float64)
        if v.ndim != 2 or v.shape[1] < 2:
            raise RegionError(f"napari shape vertices must be (N, 2) (row, col); got shape {v.shape}")
        out.append(RegionAnnotation(np.stack([v[:, -1] / sx, v[:, -2] / sy], axis=1), tuple(t), str(slide_path)))
    return out


def regions_to_napari(
    regions: Sequence[RegionAnnotation], scale: float | Sequence[float] = 1.0
) -> tuple[list[np.ndarray], list[tuple[str, ...]]]:
    """Inverse of :func:`regions_from_napari`: (row, col) vertex arrays in world units, and tags."""
    sy, sx = _scale_yx(scale)
    data = [np.stack([r.polygon[:, 1] * sy, r.polygon[:, 0] * sx], axis=1) for r in regions]
    return data, [r.classes for r in regions]
