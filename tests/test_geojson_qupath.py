"""GeoJSON for QuPath: one valid Polygon per connected object, simplified (µm), minimum area, fast re-load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import shapely
from shapely.geometry import shape

from protoseg.classes import ClassSpec
from protoseg.cli import build_parser
from protoseg.export import ExportError, load_geojson_mask, mask_to_geojson

CLASSES = ClassSpec(names=("TUM", "STR", "LYM"), colors=((255, 0, 0), (0, 255, 0), (0, 0, 255)))
BG = 3
MPP = 0.5  # µm per pixel


def _noisy_mask() -> np.ndarray:
    """Two large blobs with ragged (staircase) borders, a big hole, a 2x2-px hole, and 1-px specks."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:300, 0:400]
    m = np.full((300, 400), BG, np.uint8)
    m[(yy - 150) ** 2 + (xx - 120) ** 2 < 100**2] = 0
    m[(yy - 150) ** 2 + (xx - 300) ** 2 < 90**2] = 1  # touches / overlaps the tumour disc: a shared border
    m[(yy - 150) ** 2 + (xx - 100) ** 2 < 30**2] = BG  # big hole (1.4 mm²... 2800 px)
    m[100:102, 150:152] = BG  # tiny hole: 1 µm²
    border = (np.abs(np.hypot(yy - 150, xx - 120) - 100) < 2) & (rng.random(m.shape) < 0.5)
    m[border] = BG
    specks = rng.random(m.shape) < 0.002
    m[specks] = 2
    return m


def _shapes(gj: dict) -> list:
    return [shape(f["geometry"]) for f in gj["features"]]


def test_one_valid_polygon_per_object_with_classification() -> None:
    m = _noisy_mask()
    exact = mask_to_geojson(m, CLASSES)
    smooth = mask_to_geojson(m, CLASSES, mpp=MPP, simplify_um=2.0, min_area_um2=20.0)
    for gj in (exact, smooth):
        for f in gj["features"]:
            assert f["type"] == "Feature" and f["geometry"]["type"] == "Polygon"
            assert f["properties"]["objectType"] == "annotation"
            c = f["properties"]["classification"]
            assert c["color"] == list(CLASSES.colors[CLASSES.names.index(c["name"])])
        assert all(g.is_valid and not g.is_empty for g in _shapes(gj))
    names = [f["properties"]["classification"]["name"] for f in smooth["features"]]
    assert sorted(names) == ["STR", "TUM"]  # LYM specks (1 px = 0.25 µm²) are gone; one object per blob
    tum = next(g for g, n in zip(_shapes(smooth), names) if n == "TUM")
    assert len(tum.interiors) == 1  # the big hole stays, the 1 µm² one is filled
    n_exact = sum(len(r) for f in exact["features"] for r in f["geometry"]["coordinates"])
    n_smooth = sum(len(r) for f in smooth["features"] for r in f["geometry"]["coordinates"])
    assert n_smooth * 10 < n_exact and len(json.dumps(smooth)) * 10 < len(json.dumps(exact))
    # simplified outlines stay close: rasterised back, > 97 % of each class's pixels agree
    back = load_geojson_mask(smooth, m.shape, CLASSES)
    for c in (0, 1):
        a, b = m == c, back == c
        assert (a & b).sum() / (a | b).sum() > 0.97
    # classes that share a border neither overlap nor leave a gap there (coverage simplification)
    s_tum, s_str = (g for g, n in zip(_shapes(smooth), names) if n in ("TUM", "STR"))
    assert s_tum.intersection(s_str).area < 1e-6


def test_coordinates_scale_and_validation() -> None:
    m = np.full((40, 40), BG, np.uint8)
    m[10:30, 10:30] = 0
    gj = mask_to_geojson(m, CLASSES, factor=4.0, offset=(100, 200), mpp=0.25, simplify_um=1.0, min_area_um2=1.0)
    g = _shapes(gj)[0]
    assert g.bounds == (140.0, 240.0, 220.0, 320.0) and g.is_valid  # a square stays a square
    with pytest.raises(ExportError, match="mpp"):
        mask_to_geojson(m, CLASSES, simplify_um=1.0)
    with pytest.raises(ExportError, match=">= 0"):
        mask_to_geojson(m, CLASSES, mpp=0.5, min_area_um2=-1)


def test_diagonal_touching_pixels_give_valid_geometry() -> None:
    rng = np.random.default_rng(3)
    m = rng.integers(0, 4, (30, 24)).astype(np.uint8)  # many corner-touching regions and holes
    for gj in (mask_to_geojson(m, CLASSES), mask_to_geojson(m, CLASSES, mpp=MPP, simplify_um=0.5)):
        assert all(shapely.is_valid(g) for g in _shapes(gj))
    assert np.array_equal(load_geojson_mask(mask_to_geojson(m, CLASSES), m.shape, CLASSES), m)


def test_load_burns_inside_bounding_boxes_and_clips() -> None:
    square = [[[-5, -5], [10, -5], [10, 8], [-5, 8], [-5, -5]], [[2, 2], [4, 2], [4, 4], [2, 4], [2, 2]]]
    far = [[[500, 500], [600, 500], [600, 600], [500, 500]]]  # entirely off the canvas: ignored
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": rings}, "properties": {"name": "STR"}}
            for rings in (square, far)
        ],
    }
    got = load_geojson_mask(doc, (20, 30), CLASSES)
    want = np.full((20, 30), BG, np.uint8)
    want[0:8, 0:10] = 1
    want[2:4, 2:4] = BG
    assert np.array_equal(got, want)
    doc["features"][0]["geometry"]["coordinates"] = [[[0, 0], [1, float("nan")], [2, 2]]]
    with pytest.raises(ExportError, match="finite"):
        load_geojson_mask(doc, (20, 30), CLASSES)


def test_cli_export_has_simplify_and_min_area_options() -> None:
    args = build_parser().parse_args(["export", "p.zarr", "-f", "geojson", "--simplify", "0.5", "--min-area", "0"])
    assert (args.simplify, args.min_area) == (0.5, 0.0)


def test_objects_carry_measurements_stable_ids_and_the_chosen_object_type() -> None:
    """Issue 20 item 5: area (µm²) and perimeter (µm) as QuPath measurements, equal to shapely's on the
    written geometry; a UUID per object, the same on every export of the same slide; detections on request."""
    import uuid

    m = _noisy_mask()
    gj = mask_to_geojson(m, CLASSES, factor=2.0, mpp=MPP / 2, simplify_um=1.0, min_area_um2=5.0, slide="s.svs")
    assert gj["features"]
    for f in gj["features"]:
        g = shape(f["geometry"])
        meas = f["properties"]["measurements"]
        assert meas["Area µm^2"] == pytest.approx(g.area * (MPP / 2) ** 2, abs=1e-3)
        assert meas["Perimeter µm"] == pytest.approx(g.length * MPP / 2, abs=1e-3)
        assert f["properties"]["objectType"] == "annotation" and uuid.UUID(f["id"]).version == 5
    ids = [f["id"] for f in gj["features"]]
    assert len(set(ids)) == len(ids)
    same = mask_to_geojson(m, CLASSES, factor=2.0, mpp=MPP / 2, simplify_um=1.0, min_area_um2=5.0, slide="s.svs")
    assert [f["id"] for f in same["features"]] == ids
    other = mask_to_geojson(m, CLASSES, factor=2.0, mpp=MPP / 2, simplify_um=1.0, min_area_um2=5.0, slide="t.svs")
    assert not {f["id"] for f in other["features"]} & set(ids)  # another slide's objects are other objects
    det = mask_to_geojson(m, CLASSES, object_type="detection")
    assert {f["properties"]["objectType"] for f in det["features"]} == {"detection"}
    px = det["features"][0]
    assert px["properties"]["measurements"]["Area px^2"] == pytest.approx(shape(px["geometry"]).area)
    with pytest.raises(ExportError, match="annotation or detection"):
        mask_to_geojson(m, CLASSES, object_type="cell")


def test_cli_export_writes_detections_on_request(tmp_path) -> None:
    from protoseg.cli import main
    from test_export import _finished_prediction

    pred = _finished_prediction(tmp_path / "s.zarr")
    out = tmp_path / "d.geojson"
    args = ["export", str(pred), "-f", "geojson", "-o", str(out), "--min-area", "0", "--object-type", "detection"]
    assert main(args) == 0
    doc = json.loads(out.read_text())
    assert doc["features"] and {f["properties"]["objectType"] for f in doc["features"]} == {"detection"}
    assert doc["protoseg"]["kind"] == "geojson-export"  # still recognised as protoseg's own export
    assert main([*args[:-1], "annotation"]) == 0  # replaces its own export without --overwrite
    assert {f["properties"]["objectType"] for f in json.loads(out.read_text())["features"]} == {"annotation"}
    assert build_parser().parse_args(["export", "p.zarr", "-f", "geojson"]).object_type == "annotation"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["export", "p.zarr", "-f", "geojson", "--object-type", "cell"])
