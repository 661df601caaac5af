"""Region annotations: GeoJSON / napari conversion and the on-the-fly WSI region patch dataset."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from PIL import Image

from protoseg.data import (
    RegionAnnotation,
    RegionError,
    WsiRegionDataset,
    load_regions_geojson,
    regions_from_napari,
    regions_to_napari,
    save_regions_geojson,
)

CANVAS_H, CANVAS_W = 300, 700


def _canvas() -> np.ndarray:
    """Level-0 pixels that encode their own coordinates: R = x % 256, G = y % 256, B = x // 256."""
    yy, xx = np.mgrid[0:CANVAS_H, 0:CANVAS_W]
    return np.stack([xx % 256, yy % 256, xx // 256], axis=-1).astype(np.uint8)


class FakeSlide:
    """Minimal ``protoseg.slide.SlideLike`` (level 0 only); the dataset resamples with read_at_scale."""

    opened = 0
    level_count, level_dimensions, level_downsamples = 1, ((CANVAS_W, CANVAS_H),), (1.0,)

    def __init__(self, path: str, mpp: float | None = 0.5) -> None:
        self.path, self.mpp, self.pixels = path, mpp, _canvas()
        FakeSlide.opened += 1

    def read_region(self, location, level, size):
        (x, y), (w, h) = location, size
        assert level == 0 and x >= 0 and y >= 0 and x + w <= CANVAS_W and y + h <= CANVAS_H  # clipped by caller
        return self.pixels[y : y + h, x : x + w]

    def close(self) -> None:
        pass


def fake_opener(path: str) -> FakeSlide:
    return FakeSlide(path)


def _rect(x0, y0, x1, y1):
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def test_patch_labels_are_union_of_overlapping_region_tags():
    regions = [
        RegionAnnotation(_rect(0, 0, 400, 200), ("TUM",), "s.tif"),
        RegionAnnotation(_rect(300, 0, 600, 200), ("STR", "LYM"), "s.tif"),
    ]
    ds = WsiRegionDataset(regions, ["TUM", "STR", "LYM", "NEC"], mpp=0.5, patch_size=100, slide_opener=fake_opener)
    boxes = sorted(p.box for p in ds.patches)
    # grid of 100 px over both rectangles, duplicates at x=300 merged
    assert boxes == sorted((x, y, 100, 100) for x in range(0, 600, 100) for y in (0, 100))
    for p in ds.patches:
        x = p.box[0]
        overlaps_a = x < 400 and x + 100 > 0
        overlaps_b = x < 600 and x + 100 > 300
        assert p.label == (int(overlaps_a), int(overlaps_b), int(overlaps_b), 0), p
    i = next(k for k, p in enumerate(ds.patches) if p.box[:2] == (300, 100))
    s = ds[i]
    assert s["label"].tolist() == [1, 1, 1, 0] and s["image"].shape == (3, 100, 100)
    px = (s["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(px, _canvas()[100:200, 300:400])  # the patch at its box, untouched
    assert s["name"] == "s_x300_y100" and s["box"].tolist() == [300, 100, 100, 100]


def test_min_inside_and_target_mpp_scaling():
    tri = RegionAnnotation(np.array([[0, 0], [400, 0], [0, 400]], float), ("NEC",), "s.tif")
    ds = WsiRegionDataset([tri], ["TUM", "NEC"], mpp=0.5, patch_size=100, min_inside=0.6, slide_opener=fake_opener)
    kept = sorted((p.box[0] // 100, p.box[1] // 100) for p in ds.patches)
    assert kept == sorted((i, j) for i in range(4) for j in range(4) if i + j <= 2)  # diagonal cells are 50 % inside
    # at 1.0 um/px a 50 px patch covers 100 level-0 px of a 0.5 um/px slide
    ds2 = WsiRegionDataset([tri], ["TUM", "NEC"], mpp=1.0, patch_size=50, min_inside=0.6, slide_opener=fake_opener)
    assert sorted(p.box for p in ds2.patches) == sorted(p.box for p in ds.patches)
    img = ds2[0]["image"]
    assert img.shape == (3, 50, 50)
    x, y = ds2.patches[0].box[:2]
    # area (BOX) resampling: each output pixel is the mean of its 2x2 level-0 block, rounded
    blocks = _canvas()[y : y + 100, x : x + 100, 0].astype(float).reshape(50, 2, 50, 2).mean(axis=(1, 3))
    assert np.abs((img[0].numpy() * 255).round() - blocks).max() <= 0.5


def test_jitter_is_seeded_and_slides_open_lazily_and_pickle():
    regions = [RegionAnnotation(_rect(0, 0, 600, 300), ("TUM",), "s.tif")]
    a = WsiRegionDataset(regions, ["TUM"], mpp=0.5, patch_size=100, jitter=0.3, seed=3, slide_opener=fake_opener)
    b = WsiRegionDataset(regions, ["TUM"], mpp=0.5, patch_size=100, jitter=0.3, seed=3, slide_opener=fake_opener)
    assert [p.box for p in a.patches] == [p.box for p in b.patches]
    assert any(p.box[0] % 100 for p in a.patches)  # jittered off the grid
    assert a._slides == {}  # only the mpp was read during indexing; no handle kept
    a[0]
    assert len(a._slides) == 1
    c = pickle.loads(pickle.dumps(a))
    assert c._slides == {} and np.array_equal(c[0]["image"].numpy(), a[0]["image"].numpy())


def test_missing_mpp_needs_fallback_and_unknown_tags_rejected():
    region = [RegionAnnotation(_rect(0, 0, 200, 200), ("TUM",), "s.tif")]

    def no_mpp(path):
        return FakeSlide(path, mpp=None)

    with pytest.raises(RegionError, match="fallback_mpp"):
        WsiRegionDataset(region, ["TUM"], mpp=0.5, patch_size=100, slide_opener=no_mpp)
    ds = WsiRegionDataset(region, ["TUM"], mpp=1.0, patch_size=50, fallback_mpp=0.5, slide_opener=no_mpp)
    assert len(ds) == 4 and ds[0]["image"].shape == (3, 50, 50)
    with pytest.raises(RegionError, match=r"\['XYZ'\] are not classes"):
        WsiRegionDataset([RegionAnnotation(_rect(0, 0, 9, 9), ("XYZ",), "s")], ["TUM"], mpp=0.5)


def test_png_backed_protoseg_slide(tmp_path):
    slide_mod = pytest.importorskip("protoseg.slide")
    path = tmp_path / "canvas.png"
    Image.fromarray(_canvas()).save(path)
    region = [RegionAnnotation(_rect(100, 50, 300, 250), ("STR",), str(path))]
    ds = WsiRegionDataset(
        region, ["TUM", "STR"], mpp=0.25, patch_size=100, fallback_mpp=0.25, slide_opener=slide_mod.open_slide
    )
    assert len(ds) == 4
    p = ds.patches[0]
    x, y = p.box[:2]
    got = (ds[0]["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    np.testing.assert_array_equal(got, _canvas()[y : y + 100, x : x + 100])


def test_geojson_roundtrip_and_qupath_variants(tmp_path):
    regions = [
        RegionAnnotation(_rect(0, 0, 10, 20), ("TUM", "NEC"), "/slides/a.svs"),
        RegionAnnotation(np.array([[5, 5], [9, 5], [7, 9]], float), ("STR",), "/slides/a.svs"),
    ]
    path = save_regions_geojson(tmp_path / "r.geojson", regions)
    back = load_regions_geojson(path)
    assert [r.classes for r in back] == [("TUM", "NEC"), ("STR",)]
    assert all(np.array_equal(a.polygon, b.polygon) and a.slide_path == b.slide_path for a, b in zip(regions, back))
    feats = [
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
            "properties": {"classification": {"name": "LYM", "color": [0, 0, 255]}},
        },
        {
            "type": "Feature",
            "geometry": {
                "type": "MultiPolygon",
                "coordinates": [[[[0, 0], [1, 0], [1, 1], [0, 0]]], [[[5, 5], [6, 5], [6, 6], [5, 5]]]],
            },
            "properties": {"classes": ["TUM", "STR"]},
        },
        {
            "type": "Feature",
            "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
            "properties": {},
        },
    ]
    (tmp_path / "q.geojson").write_text(json.dumps(feats))
    got = load_regions_geojson(tmp_path / "q.geojson", slide_path="b.svs")
    assert [(r.classes, len(r.polygon), r.slide_path) for r in got] == [
        (("LYM",), 3, "b.svs"),
        (("TUM", "STR"), 3, "b.svs"),
        (("TUM", "STR"), 3, "b.svs"),
    ]
    np.testing.assert_array_equal(got[2].polygon, [[5, 5], [6, 5], [6, 6]])
    with pytest.raises(RegionError, match="slide_path"):
        load_regions_geojson(tmp_path / "q.geojson")


def test_multi_label_regions_are_qupath_derived_classes_with_ids_and_measurements(tmp_path):
    """Issue 20 item 5: a two-class region is QuPath's derived class "A: B" and reads back as two classes;
    every region has a stable UUID and its area / perimeter (µm, shapely) as QuPath measurements."""
    import uuid

    import shapely

    from protoseg.classes import BCSS_WSSS

    poly = np.array([[100, 50], [300, 50], [300, 250], [200, 300], [100, 250]], float)
    regions = [
        RegionAnnotation(poly, ("TUM", "STR"), "/slides/a.svs"),
        RegionAnnotation(_rect(0, 0, 40, 20), ("LYM",), "/slides/a.svs"),
        RegionAnnotation(_rect(0, 0, 40, 20), ("LYM",), "/slides/a.svs"),  # a duplicate still gets its own id
    ]
    path = save_regions_geojson(tmp_path / "r.geojson", regions, BCSS_WSSS, mpp=0.5)
    doc = json.loads(path.read_text())
    feats = doc["features"]
    cls = [f["properties"]["classification"] for f in feats]
    assert cls[0] == {"name": "TUM: STR", "names": ["TUM", "STR"], "color": list(BCSS_WSSS.colors[0])}
    assert cls[1]["name"] == "LYM" and cls[1]["color"] == list(BCSS_WSSS.colors[2])
    assert all(f["properties"]["objectType"] == "annotation" for f in feats)
    ids = [f["id"] for f in feats]
    assert len(set(ids)) == 3 and all(uuid.UUID(i).version == 5 for i in ids)
    again = json.loads(save_regions_geojson(tmp_path / "again.geojson", regions, BCSS_WSSS, mpp=0.5).read_text())
    assert [f["id"] for f in again["features"]] == ids  # stable: the same regions keep their ids
    for f, r in zip(feats, regions):
        g = shapely.Polygon(r.polygon)
        m = f["properties"]["measurements"]
        assert m["Area µm^2"] == pytest.approx(g.area * 0.25, abs=1e-3)
        assert m["Perimeter µm"] == pytest.approx(g.length * 0.5, abs=1e-3)
    px = json.loads(save_regions_geojson(tmp_path / "px.geojson", regions[:1]).read_text())["features"][0]
    assert px["properties"]["measurements"] == {
        "Area px^2": pytest.approx(shapely.Polygon(poly).area),
        "Perimeter px": pytest.approx(shapely.Polygon(poly).length),
    }
    assert [r.classes for r in load_regions_geojson(path)] == [("TUM", "STR"), ("LYM",), ("LYM",)]
    # as QuPath writes it (derived class by name only) and as protoseg wrote it before (names only)
    for props in (
        {"classification": {"name": "TUM: STR", "color": [1, 2, 3]}},
        {"classification": {"names": ["TUM", "STR"]}},
    ):
        feats[0]["properties"] = props
        (tmp_path / "q.geojson").write_text(json.dumps(doc))
        assert load_regions_geojson(tmp_path / "q.geojson", slide_path="a.svs")[0].classes == ("TUM", "STR")


def test_napari_shapes_conversion_with_scale():
    # napari vertices are (row, col) in world units: pixels * scale (um)
    shapes = [np.array([[0.0, 0.0], [0.0, 5.0], [10.0, 5.0], [10.0, 0.0]])]
    regions = regions_from_napari(shapes, [("TUM",)], "s.svs", scale=(0.5, 0.25))
    np.testing.assert_allclose(regions[0].polygon, [[0, 0], [20, 0], [20, 20], [0, 20]])
    data, tags = regions_to_napari(regions, scale=(0.5, 0.25))
    np.testing.assert_allclose(data[0], shapes[0])
    assert tags == [("TUM",)]
    with pytest.raises(RegionError, match="one tag tuple per shape"):
        regions_from_napari(shapes, [], "s.svs")


def test_real_svs_region_patches():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "slides" / "cmu-1-small-region.svs"
    if not path.is_file():
        pytest.skip(f"real test slide not available at {path}")
    pytest.importorskip("protoseg.slide")
    region = RegionAnnotation(_rect(900, 1950, 1500, 2450), ("TUM",), str(path))  # a tissue area
    ds = WsiRegionDataset([region], ["TUM", "STR"], mpp=1.0, patch_size=128)
    side = ds.patches[0].box[2]
    assert side == round(128 * 1.0 / ds.slide_mpp[str(path)])  # ~256 level-0 px at 0.499 um/px
    assert len(ds) == ((600 - side) // side + 1) * ((500 - side) // side + 1)
    img = ds[0]["image"]
    assert img.shape == (3, 128, 128) and float(img.std()) > 0.05 and float(img.mean()) < 0.9  # stained tissue
