"""Corrections <-> QuPath GeoJSON annotation objects, in level-0 slide pixels (x, y) = grid (col, row) * scale.

Export: one ``Polygon`` per 4-connected corrected area of a class, exact pixel-edge outlines, through the
one mask-to-QuPath path (``protoseg.export.geojson.mask_to_geojson``: ``rasterio.features.shapes``, QuPath
``classification``/``measurements``/stable ids), written atomically with protoseg's marker member
(``protoseg.export.replace``). Only the bounding boxes of touching groups of stored chunks are read.
Import: polygons whose classification names one class of the store are burnt in by pixel centres
(``rasterio.features.rasterize``, each inside its own bounding box); other classes are skipped with one
warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.corrections.errors import CorrectionsError
from protoseg.corrections.store import CorrectionStore, open_corrections
from protoseg.data import qupath
from protoseg.data.qupath import ObjectType

logger = logging.getLogger(__name__)


def _with_background(classes: ClassSpec) -> ClassSpec:
    """The store's classes with background as one more class (corrections may paint background too)."""
    return ClassSpec(
        names=(*classes.names, classes.background_name),
        colors=(*classes.colors, classes.background_color),
        background_color=classes.background_color,
        background_name=f"{classes.background_name} (none)",
    )


def _chunk_groups(store: CorrectionStore) -> Iterator[tuple[int, int, int, int]]:
    """Grid boxes (y0, y1, x0, x1) covering each 8-connected group of chunks that hold corrections."""
    from scipy import ndimage

    rows, cols = store.grid_shape
    present = np.zeros((rows, cols), bool)
    for cy, cx, _ in store.stored_chunks():
        present[cy, cx] = True
    labels, _ = ndimage.label(present, structure=np.ones((3, 3), bool))
    c = store.chunk
    for sl in ndimage.find_objects(labels):
        if sl is None:
            continue
        yield (
            sl[0].start * c,
            min(sl[0].stop * c, store.shape[0]),
            sl[1].start * c,
            min(sl[1].stop * c, store.shape[1]),
        )


def corrections_collection(
    store: CorrectionStore, object_type: ObjectType | str = ObjectType.ANNOTATION
) -> dict[str, Any]:
    """FeatureCollection of the store's corrected areas (QuPath objects, level-0 slide pixels)."""
    from protoseg.export.geojson import mask_to_geojson

    classes = _with_background(store.classes)
    slide_mpp = None if store.mpp is None else store.mpp / store.scale  # µm per level-0 slide pixel
    features: list[dict[str, Any]] = []
    for y0, y1, x0, x1 in _chunk_groups(store):
        labels = store.read(y0, y1, x0, x1)
        mask = labels.astype(np.int16) - 1  # -1 = no correction (invalid), c = class c, C = background
        part = mask_to_geojson(
            mask,
            classes,
            factor=store.scale,
            offset=(x0 * store.scale, y0 * store.scale),
            mpp=slide_mpp,
            object_type=object_type,
            slide=store.slide,
        )
        features.extend(part["features"])
    return {"type": "FeatureCollection", "features": features}


def corrections_to_geojson(
    store: CorrectionStore | str | os.PathLike[str],
    out: str | os.PathLike[str],
    object_type: ObjectType | str = ObjectType.ANNOTATION,
    *,
    overwrite: bool = False,
) -> Path:
    """Write the corrections as QuPath GeoJSON to ``out`` (atomic; an existing file is replaced only when
    protoseg wrote it, or with ``overwrite``); returns ``out``."""
    from protoseg.export.geojson import as_object_type
    from protoseg.export.replace import sign_geojson, write_file_export

    if not isinstance(store, CorrectionStore):
        store = open_corrections(store, mode="r")
    collection = sign_geojson(corrections_collection(store, as_object_type(object_type)))
    text = json.dumps(collection, separators=(",", ":"))
    path = write_file_export(out, "geojson", lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite)
    logger.info("wrote %d corrected areas of %s to %s", len(collection["features"]), store.path, path)
    return path


def _feature_names(props: dict[str, Any]) -> tuple[str, ...]:
    """Class names of a QuPath or protoseg object: ``names``, else ``name`` split at ':', else ``classes``."""
    cls = props.get("classification")
    if isinstance(cls, dict):
        if isinstance(cls.get("names"), list) and cls["names"]:
            return tuple(str(n) for n in cls["names"])
        if isinstance(cls.get("name"), str):
            return qupath.split_derived(cls["name"])
    if isinstance(props.get("classes"), list):
        return tuple(str(n) for n in props["classes"])
    return ()


def _polygons(geometry: dict[str, Any]) -> list[list[Any]]:
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry.get("coordinates") or []]
    if kind == "MultiPolygon":
        return list(geometry.get("coordinates") or [])
    return []


def _burn(store: CorrectionStore, rings: list[Any], value: int) -> int:
    """Burn one polygon (slide pixels) into the store by pixel centres; returns pixels written."""
    from affine import Affine
    from rasterio.features import rasterize

    try:
        xy = np.asarray(rings[0], dtype=np.float64)[:, :2] / store.scale
    except (IndexError, TypeError, ValueError):
        return 0
    if xy.ndim != 2 or len(xy) < 3 or not np.isfinite(xy).all():
        return 0
    c0, r0 = np.maximum(np.floor(xy.min(axis=0)).astype(np.int64), 0)
    c1, r1 = np.minimum(np.ceil(xy.max(axis=0)).astype(np.int64), (store.shape[1], store.shape[0]))
    if c0 >= c1 or r0 >= r1:
        return 0
    s = store.scale
    transform = Affine(s, 0.0, c0 * s, 0.0, s, r0 * s)
    geom = {"type": "Polygon", "coordinates": rings}
    inside = rasterize([(geom, 1)], out_shape=(int(r1 - r0), int(c1 - c0)), transform=transform, dtype="uint8") > 0
    if not inside.any():
        return 0
    block = store.read(int(r0), int(r1), int(c0), int(c1))
    block[inside] = value
    store.write(int(r0), int(c0), block)
    return int(inside.sum())


def corrections_from_geojson(path: str | os.PathLike[str], store: CorrectionStore) -> int:
    """Burn the polygons of a QuPath/protoseg GeoJSON whose classification names one of the store's classes
    (or its background) into ``store``; later objects win; returns pixels written. Objects of other
    classes are skipped with one warning naming them."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise CorrectionsError(f"cannot read GeoJSON {path} ({exc}); export it again from QuPath.") from None
    features = doc.get("features") if isinstance(doc, dict) else doc if isinstance(doc, list) else None
    if isinstance(doc, dict) and doc.get("type") == "Feature":
        features = [doc]
    if not isinstance(features, list):
        raise CorrectionsError(
            f"{path} is not a GeoJSON FeatureCollection; export the annotations from QuPath as GeoJSON."
        )
    lookup = {n: i + 1 for i, n in enumerate(store.classes.names)}
    lookup[store.classes.background_name] = store.classes.num_classes + 1
    skipped: dict[str, int] = {}
    written = 0
    for feat in features:
        if not isinstance(feat, dict):
            continue
        names = _feature_names(feat.get("properties") or {})
        value = lookup.get(names[0]) if len(names) == 1 else None
        if value is None:
            key = qupath.DERIVED_SEPARATOR.join(names) or "(unclassified)"
            skipped[key] = skipped.get(key, 0) + 1
            continue
        for rings in _polygons(feat.get("geometry") or {}):
            written += _burn(store, rings, value)
    if skipped:
        logger.warning(
            "%s: skipped %d object(s) of classes not in %s: %s",
            path,
            sum(skipped.values()),
            [*store.classes.names, store.classes.background_name],
            ", ".join(sorted(skipped)),
        )
    logger.info("imported %d corrected pixels from %s into %s", written, path, store.path)
    return written


def store_from_geojson(
    geojson: str | os.PathLike[str],
    slide: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    folder: str | os.PathLike[str],
) -> CorrectionStore:
    """A corrections store in ``folder`` holding the objects of ``geojson`` (level-0 pixels of ``slide``) on
    the grid ``checkpoint`` predicts that slide on; one imported from the same file before is rebuilt."""
    import shutil

    from protoseg.corrections.store import create_corrections, default_corrections_path, read_attrs
    from protoseg.infer.predictor import Predictor
    from protoseg.infer.reader import open_any

    geojson = Path(geojson).expanduser().resolve()
    if not geojson.is_file():
        raise CorrectionsError(
            f"corrections file {geojson} does not exist; pass a QuPath GeoJSON or a corrections store."
        )
    predictor = Predictor(checkpoint, device="cpu")
    geom = predictor.geometry(open_any(slide))
    path = Path(folder) / f"{geojson.stem}-{default_corrections_path(folder, slide).name}"
    attrs = read_attrs(path)
    if attrs is not None and attrs.get("source") == str(geojson):
        shutil.rmtree(path)  # derived from the GeoJSON (the user's data), rebuilt from it
    store = create_corrections(
        path,
        slide=slide,
        shape=(geom.grid.height, geom.grid.width),
        mpp=geom.mpp,
        scale=geom.scale,
        classes=predictor.classes,
        source=str(geojson),
    )
    if corrections_from_geojson(geojson, store) == 0:
        raise CorrectionsError(f"{geojson} holds no object of classes {list(store.classes.names)} inside {slide}.")
    return store
