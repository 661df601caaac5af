"""GeoJSON export size and load speed on a 1.1 x 1.5 mm prediction-like mask (0.5 µm/px, ragged, specks).

Before = exact pixel outlines (what the export wrote until now: every staircase step and 1-px speck);
after = the export defaults (``DEFAULT_SIMPLIFY_UM``, ``DEFAULT_MIN_AREA_UM2``). ``load_geojson_mask``
is timed against the previous full-frame rasteriser (one mask-sized image per ring), interleaved,
median of repeats, on a slide-sized canvas. The polygonisation (exact outlines of every class) is timed
against the hand-written marching-squares tracer it replaced (kept below as ``traced_polygons``),
interleaved, median of 3, and both must give the same objects (count and total area per class).
Run: ``python benchmarks/geojson_export.py``.
"""

from __future__ import annotations

import json
import statistics
import time

import numpy as np
from scipy import ndimage

from protoseg.classes import BCSS_WSSS
from protoseg.data.synthetic.layout import random_layout
from protoseg.export.geojson import (
    DEFAULT_MIN_AREA_UM2,
    DEFAULT_SIMPLIFY_UM,
    _valid_parts,
    _value_polygons,
    load_geojson_mask,
    mask_to_geojson,
)

MPP = 0.5
HEIGHT, WIDTH = 3000, 2200  # 1.5 x 1.1 mm at 0.5 µm/px


def prediction_like_mask(seed: int = 0) -> np.ndarray:
    """Smooth class regions with ragged borders and scattered specks, as a tile-wise CNN predicts."""
    rng = np.random.default_rng(seed)
    mask = random_layout((HEIGHT, WIDTH), rng, n_classes_range=(4, 4), background_prob=1.0, scale=600).astype(np.uint8)
    noise = ndimage.gaussian_filter(rng.standard_normal((HEIGHT, WIDTH)), 1.5)
    specks = noise > 2.8 * noise.std()
    mask[specks] = rng.integers(0, 5, int(specks.sum()))
    edges = ndimage.morphological_gradient(mask, size=3) > 0
    jitter = edges & (rng.random(mask.shape) < 0.3)
    mask[jitter] = np.roll(mask, 1, axis=1)[jitter]
    return mask


def stats(collection: dict) -> tuple[int, int, int]:
    text = json.dumps(collection, separators=(",", ":"))
    vertices = sum(len(r) for f in collection["features"] for r in f["geometry"]["coordinates"])
    return len(text.encode()), vertices, len(collection["features"])


def old_load(doc: dict, shape: tuple[int, int]) -> np.ndarray:
    """The previous rasteriser: a full mask-sized boolean image for every ring."""
    from skimage.draw import polygon

    lookup = {n: i for i, n in enumerate(BCSS_WSSS.names)}
    mask = np.full(shape, BCSS_WSSS.background_index, np.uint8)

    def fill(ring):
        xy = np.asarray(ring, dtype=np.float64)
        out = np.zeros(shape, bool)
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
        out[rr, cc] = True
        return out

    for feat in doc["features"]:
        rings = feat["geometry"]["coordinates"]
        region = fill(rings[0])
        for hole in rings[1:]:
            region &= ~fill(hole)
        mask[region] = lookup[feat["properties"]["classification"]["name"]]
    return mask


def _corners(contour: np.ndarray) -> np.ndarray:
    """Marching-squares contour (row, col; closed) -> its pixel-edge corner points (the old tracer)."""
    pts = contour[:-1]
    nxt = np.roll(pts, -1, axis=0)
    horiz = np.isclose(pts[:, 0] % 1, 0.5)
    turn = horiz != np.roll(horiz, -1)
    a, b, ha = pts[turn], nxt[turn], horiz[turn]
    return np.stack([np.where(ha, a[:, 0], b[:, 0]), np.where(ha, b[:, 1], a[:, 1])], axis=1)


def traced_polygons(mask: np.ndarray, n_classes: int) -> list[tuple[int, object]]:
    """The hand-written polygonisation the export used before rasterio: label, then trace each component."""
    import shapely
    from skimage.measure import find_contours

    out = []
    for idx in range(n_classes):
        labels, _ = ndimage.label(mask == idx)
        for i, sl in enumerate(ndimage.find_objects(labels), start=1):
            if sl is None:
                continue
            comp = labels[sl] == i
            rings = []
            for contour in find_contours(np.pad(comp, 1).astype(np.float32), 0.5):
                rc = _corners(contour)
                rings.append(np.stack([rc[:, 1] - 0.5 + sl[1].start, rc[:, 0] - 0.5 + sl[0].start], axis=1))
            areas = [shapely.Polygon(r).area for r in rings]
            outer = int(np.argmax(areas))
            holes = [r for j, r in enumerate(rings) if j != outer]
            out.extend((idx, p) for p in _valid_parts(shapely.Polygon(rings[outer], holes)))
    return out


def polygonise_comparison(mask: np.ndarray, n_classes: int) -> None:
    """Time the old tracer against ``rasterio.features.shapes`` (interleaved, median of 3); same objects."""
    old_t, new_t = [], []
    for _ in range(3):
        t = time.perf_counter()
        old = traced_polygons(mask, n_classes)
        old_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        new = _value_polygons(mask, mask < n_classes, 0, 0)
        new_t.append(time.perf_counter() - t)
    for label, objs in (("traced", old), ("rasterio", new)):
        area = [round(sum(p.area for i, p in objs if i == c)) for c in range(n_classes)]
        print(f"  {label:9s} {len(objs):6d} polygons, area per class (px) {area}")
    a, b = statistics.median(old_t), statistics.median(new_t)
    print(f"polygonise (exact outlines): traced {a:.2f} s, rasterio.features.shapes {b:.2f} s ({a / b:.1f}x)")


def main() -> None:
    mask = prediction_like_mask()
    polygonise_comparison(mask, BCSS_WSSS.num_classes)
    rows = []
    for label, kwargs in (
        ("exact (before)", {}),
        ("defaults (after)", {"mpp": MPP, "simplify_um": DEFAULT_SIMPLIFY_UM, "min_area_um2": DEFAULT_MIN_AREA_UM2}),
    ):
        t = time.perf_counter()
        gj = mask_to_geojson(mask, BCSS_WSSS, **kwargs)
        seconds = time.perf_counter() - t
        size, vertices, features = stats(gj)
        rows.append((label, size, vertices, features, seconds))
        if not kwargs:
            exact = gj
    print(f"mask {WIDTH} x {HEIGHT} px at {MPP} µm/px ({WIDTH * MPP / 1000:.1f} x {HEIGHT * MPP / 1000:.1f} mm)")
    for label, size, vertices, features, seconds in rows:
        print(f"{label:18s} {size / 1e6:7.2f} MB {vertices:8d} vertices {features:6d} features {seconds:6.2f} s")

    # load speed: a few of the exported polygons burnt into a slide-sized canvas (level-0 pixels)
    canvas = (12000, 12000)
    simple = [f for f in exact["features"] if len(f["geometry"]["coordinates"]) <= 2]  # old cost grows per ring
    doc = {
        "type": "FeatureCollection",
        "features": sorted(simple, key=lambda f: -len(f["geometry"]["coordinates"][0]))[:4],
    }
    old_t, new_t = [], []
    for _ in range(3):  # interleaved, median
        t = time.perf_counter()
        a = old_load(doc, canvas)
        old_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        b = load_geojson_mask(doc, canvas, BCSS_WSSS)
        new_t.append(time.perf_counter() - t)
        assert np.array_equal(a, b)
    n = len(doc["features"])
    print(
        f"load_geojson_mask on a {canvas[1]} x {canvas[0]} canvas: before {statistics.median(old_t) / n * 1e3:.0f} "
        f"ms/polygon, after {statistics.median(new_t) / n * 1e3:.1f} ms/polygon (median of 3, {n} polygons)"
    )


if __name__ == "__main__":
    main()
