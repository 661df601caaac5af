"""Class-tagged slide regions (polygons) and their GeoJSON / napari-shapes conversion."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.data.errors import RegionError

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class RegionAnnotation:
    """A polygon in level-0 slide pixels, (N, 2) in (x, y) order, tagged with the classes present."""

    polygon: np.ndarray
    classes: tuple[str, ...]
    slide_path: str

    def __post_init__(self) -> None:
        poly = np.array(self.polygon, dtype=np.float64)
        if poly.ndim != 2 or poly.shape[1] != 2 or len(poly) < 3:
            raise RegionError(f"a region polygon must be an (N>=3, 2) array of (x, y); got shape {poly.shape}")
        if len(poly) > 3 and np.allclose(poly[0], poly[-1]):
            poly = poly[:-1]  # drop the closing vertex of GeoJSON rings
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


def _tags(props: dict) -> tuple[str, ...]:
    cls = props.get("classification") or {}
    if isinstance(cls, dict) and cls.get("names"):
        return tuple(str(n) for n in cls["names"])
    if isinstance(cls, dict) and cls.get("name"):
        return tuple(t.strip() for t in str(cls["name"]).split(";") if t.strip())
    if isinstance(cls, str) and cls:
        return tuple(t.strip() for t in cls.split(";") if t.strip())
    plain = props.get("classes")
    if isinstance(plain, str):
        return tuple(t.strip() for t in plain.split(";") if t.strip())
    return tuple(str(c) for c in plain or ())


def _rings(geometry: dict) -> list[np.ndarray]:
    kind = geometry.get("type")
    coords = geometry.get("coordinates") or []
    polys = [coords] if kind == "Polygon" else coords if kind == "MultiPolygon" else []
    if kind not in ("Polygon", "MultiPolygon"):
        logger.warning("skipping a %s geometry: only Polygon and MultiPolygon regions are used", kind)
    if any(len(p) > 1 for p in polys):
        logger.warning("polygon holes are ignored; only outer rings are used")
    return [np.asarray(p[0], dtype=np.float64)[:, :2] for p in polys if p]


def load_regions_geojson(path: str | Path, slide_path: str | Path | None = None) -> list[RegionAnnotation]:
    """Read tagged polygons from a (QuPath-style) GeoJSON file; ``slide_path`` overrides the file's."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RegionError(f"cannot read GeoJSON {path}: {exc}") from exc
    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features", [])
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    elif isinstance(data, list):
        features = data
    else:
        raise RegionError(f"{path}: expected a GeoJSON FeatureCollection, Feature or list of Features")
    regions = []
    for i, feat in enumerate(features):
        props = feat.get("properties") or {}
        tags = _tags(props)
        if not tags:
            logger.warning("%s: feature %d has no classification/classes, skipped", path, i)
            continue
        sp = slide_path if slide_path is not None else props.get("slide_path")
        if sp is None:
            raise RegionError(
                f"{path}: feature {i} does not say which slide it belongs to; pass slide_path= "
                "or add properties.slide_path"
            )
        regions += [RegionAnnotation(ring, tags, str(sp)) for ring in _rings(feat.get("geometry") or {})]
    return regions


def save_regions_geojson(
    path: str | Path, regions: Sequence[RegionAnnotation], classes: ClassSpec | None = None
) -> Path:
    """Write regions as a GeoJSON FeatureCollection QuPath can import (classification names + colour)."""
    colours = dict(zip(classes.names, classes.colors)) if classes is not None else {}
    features = []
    for i, r in enumerate(regions):
        ring = [[float(x), float(y)] for x, y in r.polygon] + [[float(r.polygon[0, 0]), float(r.polygon[0, 1])]]
        classification: dict = {"names": list(r.classes)}
        if len(r.classes) == 1:
            classification["name"] = r.classes[0]
        if r.classes and r.classes[0] in colours:
            classification["color"] = list(colours[r.classes[0]])
        features.append(
            {
                "type": "Feature",
                "id": f"region-{i}",
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "annotation",
                    "classification": classification,
                    "classes": list(r.classes),
                    "slide_path": r.slide_path,
                },
            }
        )
    path = Path(path)
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


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
