"""Exports: GeoJSON round trip with QuPath properties, pyramidal OME-TIFF, area tables, from OME-Zarr."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch

from protoseg.classes import ClassSpec
from protoseg.export import (
    ExportError,
    ExportFormat,
    class_areas,
    copy_prediction,
    default_output,
    export_format,
    export_prediction,
    load_geojson_mask,
    mask_to_geojson,
    read_area_csv,
    write_area_csv,
    write_mask_ometiff,
)
from protoseg.outputs import OutputOwnershipError
from test_infer_fakes import CLASSES, SmoothModel, smooth_image

torch.set_num_threads(1)
BG = 3


def _shapes_mask():
    m = np.full((40, 60), BG, np.uint8)
    m[5:25, 4:30] = 0  # rectangle with a hole ...
    m[10:15, 10:20] = BG
    m[11:13, 12:14] = 1  # ... holding an island of another class
    m[28:38, 35:58] = 2
    m[0, 59] = 1  # single pixel in a corner
    m[30, 5], m[31, 6] = 0, 0  # diagonal neighbours: two separate regions
    return m


def test_geojson_polygons_follow_pixel_edges_with_holes():
    gj = mask_to_geojson(_shapes_mask(), CLASSES)
    assert gj["type"] == "FeatureCollection"
    by_class: dict[str, list] = {}
    for f in gj["features"]:  # one Polygon feature per connected object
        assert f["geometry"]["type"] == "Polygon"
        by_class.setdefault(f["properties"]["classification"]["name"], []).append(f)
    assert {k: len(v) for k, v in by_class.items()} == {"TUM": 3, "STR": 2, "LYM": 1}
    tum = by_class["TUM"]
    assert tum[0]["properties"]["objectType"] == "annotation"
    assert tum[0]["properties"]["classification"]["color"] == [255, 0, 0]
    big = max((f["geometry"]["coordinates"] for f in tum), key=len)
    exterior, hole = big
    assert sorted(map(tuple, exterior[:-1])) == sorted([(4, 5), (30, 5), (30, 25), (4, 25)])
    assert sorted(map(tuple, hole[:-1])) == sorted([(10, 10), (20, 10), (20, 15), (10, 15)])
    assert exterior[0] == exterior[-1]


def test_geojson_round_trip_exact():
    m = _shapes_mask()
    back = load_geojson_mask(mask_to_geojson(m, CLASSES), m.shape, CLASSES)
    assert np.array_equal(back, m)
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4, (50, 45)).astype(np.uint8)
    gj = json.loads(json.dumps(mask_to_geojson(noisy, CLASSES, factor=4.0, offset=(100, 20))))
    assert np.array_equal(load_geojson_mask(gj, noisy.shape, CLASSES, factor=4.0, offset=(100, 20)), noisy)


def test_geojson_coordinates_in_slide_pixels():
    m = np.full((10, 10), BG, np.uint8)
    m[2:4, 3:6] = 1
    gj = mask_to_geojson(m, CLASSES, factor=2.5, offset=(1000, 50))
    ring = gj["features"][0]["geometry"]["coordinates"][0]
    xs, ys = {p[0] for p in ring}, {p[1] for p in ring}
    assert xs == {1000 + 3 * 2.5, 1000 + 6 * 2.5} and ys == {50 + 2 * 2.5, 50 + 4 * 2.5}


def test_ometiff_pyramid_readable(tmp_path):
    import tifffile

    m0 = np.random.default_rng(1).integers(0, 4, (300, 520)).astype(np.uint8)
    m1 = m0[::2, ::2].copy()
    path = write_mask_ometiff([m0, m1], tmp_path / "m.ome.tif", mpp=0.5, classes=CLASSES, tile=128)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        series = tif.series[0]
        assert len(series.levels) == 2
        assert np.array_equal(series.levels[0].asarray(), m0) and np.array_equal(series.levels[1].asarray(), m1)
        ome = tif.ome_metadata
        assert 'PhysicalSizeX="0.5"' in ome and 'PhysicalSizeY="0.5"' in ome and "PhysicalSizeXUnit" in ome
        assert "TUM" in ome and tif.pages[0].colormap is None and tif.pages[0].dtype == np.uint8


def test_class_areas_values_and_csv(tmp_path):
    m = np.full((100, 200), BG, np.uint8)
    m[:10, :20] = 0  # 200 px
    m[50:80, 100:110] = 2  # 300 px
    rows = class_areas(m, mpp=2.0, classes=CLASSES)
    px = (2.0 / 1000) ** 2
    assert [r.name for r in rows] == ["TUM", "STR", "LYM", "background"]
    assert [r.pixels for r in rows] == [200, 0, 300, 20000 - 500]
    assert rows[0].area_mm2 == pytest.approx(200 * px) and rows[2].area_mm2 == pytest.approx(300 * px)
    assert rows[0].tissue_fraction == pytest.approx(0.4) and rows[3].tissue_fraction is None
    path = write_area_csv(rows, tmp_path / "a.csv")
    table = list(csv.DictReader(path.open()))
    assert table[2]["class"] == "LYM" and float(table[2]["area_mm2"]) == pytest.approx(300 * px)
    with pytest.raises(ExportError, match="mpp"):
        class_areas(m, mpp=None, classes=CLASSES)


def test_export_prediction_all_formats(tmp_path):
    import tifffile

    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.omezarr import open_prediction
    from protoseg.infer.predictor import Predictor

    slide = ArraySlide(smooth_image(90, 120, seed=4), mpp=0.25)
    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=32, overlap=8)
    out = tmp_path / "s.zarr"
    predict_slide_to_omezarr(p, slide, out, chunk=32, tissue_only=False)
    pz = open_prediction(out)
    mask0 = pz.mask(0)[...]
    tif = export_prediction(out, "ome-tiff")
    assert tif.name == "s.mask.ome.tif"
    with tifffile.TiffFile(tif) as t:
        assert len(t.series[0].levels) == pz.num_levels
        assert np.array_equal(t.series[0].levels[0].asarray(), mask0)
    gj = export_prediction(out, "geojson", tmp_path / "s.geojson", simplify_um=0, min_area_um2=0)  # exact
    back = load_geojson_mask(gj, mask0.shape, CLASSES, factor=2.0)  # coordinates in level-0 slide px
    assert np.array_equal(back, mask0)
    smooth = json.loads(export_prediction(out, "geojson", tmp_path / "d.geojson", min_area_um2=0).read_text())
    assert 0 < len(smooth["features"]) and all(f["geometry"]["type"] == "Polygon" for f in smooth["features"])
    rows = list(csv.DictReader(export_prediction(out, "areas").open()))
    counts = np.bincount(mask0.ravel(), minlength=4)
    assert [int(r["pixels"]) for r in rows] == counts.tolist()
    assert float(rows[0]["area_mm2"]) == pytest.approx(counts[0] * (0.5e-3) ** 2, rel=1e-5)


def test_export_without_mpp_fails_for_areas(tmp_path):
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor

    p = Predictor(SmoothModel(), classes=ClassSpec(("a", "b", "c")), mpp=None, tile_size=16, overlap=4)
    predict_slide_to_omezarr(p, ArraySlide(smooth_image(20, 20), mpp=None), tmp_path / "n.zarr", tissue_only=False)
    with pytest.raises(ExportError, match="--slide-mpp"):
        export_prediction(tmp_path / "n.zarr", "areas")
    export_prediction(tmp_path / "n.zarr", "ome-tiff")  # no physical size, still a valid file


def test_export_format_enum_values_and_default_names(tmp_path):
    assert [f.value for f in ExportFormat] == ["ome-zarr", "ome-tiff", "geojson", "areas"]
    assert export_format("geojson") is ExportFormat.GEOJSON and ExportFormat.AREAS == "areas"
    names = {f: default_output(tmp_path / "s.zarr", f).name for f in ExportFormat}
    assert names == {
        ExportFormat.OME_ZARR: "s-copy.zarr",
        ExportFormat.OME_TIFF: "s.mask.ome.tif",
        ExportFormat.GEOJSON: "s.geojson",
        ExportFormat.AREAS: "s.areas.csv",
    }
    with pytest.raises(ExportError, match="ome-zarr, ome-tiff, geojson, areas"):
        export_format("png")


def test_area_csv_round_trip(tmp_path):
    m = np.full((10, 10), BG, np.uint8)
    m[:4] = 0
    m[4:6, :5] = 2
    rows = class_areas(m, mpp=0.5, classes=CLASSES)
    back = read_area_csv(write_area_csv(rows, tmp_path / "a.csv"))
    assert [(r.class_index, r.name, r.pixels) for r in back] == [(r.class_index, r.name, r.pixels) for r in rows]
    assert [r.area_mm2 for r in back] == pytest.approx([r.area_mm2 for r in rows], rel=1e-9)
    assert [r.tissue_fraction for r in back[:-1]] == pytest.approx([r.tissue_fraction for r in rows[:-1]], rel=1e-9)
    assert back[-1].tissue_fraction is None  # background
    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    with pytest.raises(ExportError, match="area table"):
        read_area_csv(tmp_path / "bad.csv")


def _finished_prediction(path):
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor

    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=16, overlap=4)
    predict_slide_to_omezarr(p, ArraySlide(smooth_image(40, 48, seed=2), mpp=0.5), path, chunk=32, tissue_only=False)
    return path


def test_ome_zarr_copy_refuses_non_empty_folders_and_copies_into_empty_ones(tmp_path):
    from protoseg.infer.omezarr import open_prediction

    src = _finished_prediction(tmp_path / "s.zarr")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(OutputOwnershipError, match="not written by protoseg"):
        export_prediction(src, ExportFormat.OME_ZARR, foreign)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]  # nothing merged into it
    (tmp_path / "file.zarr").write_text("")
    with pytest.raises(ExportError, match="is a file"):
        copy_prediction(src, tmp_path / "file.zarr")
    (tmp_path / "empty.zarr").mkdir()
    out = export_prediction(src, "ome-zarr", tmp_path / "empty.zarr")
    assert open_prediction(out).complete
    np.testing.assert_array_equal(open_prediction(out).mask(0)[...], open_prediction(src).mask(0)[...])
    assert export_prediction(src, ExportFormat.OME_ZARR) == tmp_path / "s-copy.zarr"  # default name
    assert copy_prediction(src, src) == src  # onto itself: nothing to do
