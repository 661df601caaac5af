"""Inputs that used to hang (issue 22 item 12) end quickly: huge or self-crossing region outlines, absurd
worker counts, FIFOs named like slides, and giant flat TIFFs (refused past a documented size)."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from protoseg.classes import ClassSpec
from protoseg.cli import main
from protoseg.data.errors import RegionError
from protoseg.data.outline import MAX_CROSSINGS, MAX_VERTICES
from protoseg.data.region_tiling import tile_regions
from protoseg.data.regions import RegionAnnotation, load_regions_geojson

SPEC = ClassSpec(names=("TUM", "STR"))


class _BigSlide:
    """Geometry-only stand-in for a 100k x 100k slide at 0.25 µm/px (tiling opens slides only for that)."""

    mpp, level_count, level_dimensions, level_downsamples = 0.25, 1, ((100_000, 100_000),), (1.0,)

    def __init__(self, path: str) -> None:
        self.path = path

    def close(self) -> None:
        pass


def _circle(n: int, noise: float = 0.0) -> np.ndarray:
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = 20_000 + noise * np.random.default_rng(0).uniform(-1, 1, n)
    return np.c_[50_000 + r * np.cos(t), 50_000 + r * np.sin(t)]


def _zigzag(n: int) -> np.ndarray:
    """An outline whose every edge crosses many others (about n^2/4 crossings)."""
    return np.c_[np.linspace(20_000, 80_000, n), np.where(np.arange(n) % 2, 20_000.0, 80_000.0)]


def _wound(n: int, turns: int = 3) -> np.ndarray:
    """A wavy outline wound ``turns`` times: self-crossing a few times only."""
    t = np.linspace(0, 2 * np.pi * turns, n, endpoint=False)
    r = 20_000 + 3_000 * np.sin(t * 3.1 / turns)
    return np.c_[50_000 + r * np.cos(t), 50_000 + r * np.sin(t)]


def _tile(polygon: np.ndarray) -> int:
    region = RegionAnnotation(polygon, ("TUM",), "a.svs")
    return len(tile_regions([region], SPEC, 0.5, 224, slide_opener=_BigSlide).patches)


# ==== region outlines ==================================================================================
@pytest.mark.timeout(60)
def test_a_million_vertex_outline_is_simplified_and_tiles_quickly() -> None:
    start = time.perf_counter()
    region = RegionAnnotation(_circle(10**6), ("TUM",), "a.svs")
    assert len(region.polygon) <= MAX_VERTICES  # 1 px Douglas-Peucker: the circle keeps ~1,000 vertices
    assert _tile(_circle(10**6)) > 6000
    assert time.perf_counter() - start < 10


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind", ["noisy", "zigzag"])
def test_an_outline_too_long_even_simplified_is_refused_with_its_count(kind: str) -> None:
    polygon = _circle(10**6, noise=50) if kind == "noisy" else _zigzag(10**6)
    with pytest.raises(RegionError, match=r"has 1,000,000 vertices \(.* after simplifying to 1 px\), more than"):
        RegionAnnotation(polygon, ("TUM",), "a.svs")


@pytest.mark.timeout(60)
def test_geojson_refusal_names_the_feature(tmp_path: Path) -> None:
    ring = _zigzag(MAX_VERTICES + 10).round().tolist()
    feature = {"type": "Feature", "properties": {"classification": {"name": "TUM"}}}
    feature["geometry"] = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    path = tmp_path / "huge.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [feature]}))
    with pytest.raises(RegionError, match=r"huge\.geojson: feature 0: a region outline has 50,010 vertices"):
        load_regions_geojson(path, slide_path="a.svs")


@pytest.mark.timeout(60)
def test_an_outline_crossing_itself_too_often_is_refused() -> None:
    start = time.perf_counter()
    with pytest.raises(RegionError, match=f"crosses itself more than {MAX_CROSSINGS:,} times"):
        RegionAnnotation(_zigzag(20_000), ("TUM",), "a.svs")  # under MAX_VERTICES: repair would never end
    assert time.perf_counter() - start < 5


@pytest.mark.timeout(60)
def test_a_long_outline_crossing_itself_a_few_times_is_repaired_and_tiled() -> None:
    start = time.perf_counter()
    assert _tile(_wound(10**5)) > 6000
    assert time.perf_counter() - start < 10


# ==== worker counts ====================================================================================
def test_worker_counts_are_bounded_by_the_cores(caplog: Any) -> None:
    from protoseg.runtime import available_cores, resolve_num_workers

    with caplog.at_level(logging.WARNING, logger="protoseg.runtime"):
        assert resolve_num_workers(100_000) == available_cores()
    assert "data.num_workers=100000 is more than the" in caplog.text
    assert resolve_num_workers(0) == 0 and resolve_num_workers(1) == 1


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: Any) -> Path:
    """A tiny stage-2 checkpoint (timm's smallest backbone, random weights) at 1 µm/px."""
    from protoseg.models import build_model
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint

    cfg = {"kind": "segnet", "backbone": "test_convnext", "num_classes": 2, "decoder_dim": 8, "weights": None}
    path = tmp_path_factory.mktemp("ckpt") / "m.pt"
    save_checkpoint(Checkpoint(Stage.STAGE2, cfg, build_model(cfg).state_dict(), SPEC, mpp=1.0, patch_size=32), path)
    return path


def _predict(slide: Path, checkpoint: Path, *extra: str) -> list[str]:
    return ["predict", str(slide), "-c", str(checkpoint), "-o", str(slide.parent / "out"), "--device", "cpu", *extra]


# ==== FIFOs named like inputs ==========================================================================
@pytest.fixture
def fifo(tmp_path: Path) -> Any:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this OS")

    def make(name: str) -> Path:
        path = tmp_path / name
        os.mkfifo(path)
        return path

    return make


@pytest.mark.timeout(30)
def test_a_fifo_named_like_a_slide_is_refused(fifo: Any, checkpoint: Path, capsys: Any) -> None:
    from protoseg.slide import UnsupportedSlideError, is_rgb_slide_image, open_slide

    svs, tif = fifo("x.svs"), fifo("y.tif")
    with pytest.raises(UnsupportedSlideError, match=r"x\.svs is not a regular file"):
        open_slide(svs)
    assert not is_rgb_slide_image(tif)
    assert main(_predict(svs, checkpoint)) == 2
    err = capsys.readouterr().err
    assert "x.svs is not a regular file" in err and "Traceback" not in err


@pytest.mark.timeout(30)
def test_a_fifo_named_like_regions_is_refused(fifo: Any) -> None:
    with pytest.raises(RegionError, match=r"r\.geojson is not a regular file"):
        load_regions_geojson(fifo("r.geojson"), slide_path="a.svs")


# ==== giant flat TIFFs =================================================================================
def _flat_tiff(path: Path, side: int, tile: int = 4096) -> Path:
    """A single-level RGB TIFF of side x side px whose tiles hold no data (all read as white): a few KB."""
    n = (-(-side // tile)) ** 2
    tiles = iter([np.full((tile, tile, 3), 255, np.uint8), *([None] * (n - 1))])
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(tiles, shape=(side, side, 3), dtype=np.uint8, tile=(tile, tile), photometric="rgb", metadata=None)
    return path


@pytest.mark.timeout(60)
def test_a_giant_flat_tiff_is_refused_for_overviews_in_one_line(tmp_path: Path) -> None:
    from protoseg.slide import UnsupportedSlideError, open_slide, tissue_mask

    path = _flat_tiff(tmp_path / "giant.tif", 10**6)
    with open_slide(path) as slide:  # opening and region reads stay possible
        assert slide.dimensions == (10**6, 10**6)
        assert slide.read_level(0, (500_000, 500_000), (8, 8)).shape == (8, 8, 3)
        for overview in (slide.pyramid_arrays, slide.thumbnail, lambda: tissue_mask(slide)):
            with pytest.raises(UnsupportedSlideError, match=r"giant\.tif stores no level coarser.*pyramidal TIFF"):
                overview()


@pytest.mark.timeout(60)
def test_predicting_a_giant_flat_tiff_is_one_line(tmp_path: Path, checkpoint: Path, capsys: Any) -> None:
    path = _flat_tiff(tmp_path / "giant.tif", 10**6)
    assert main(_predict(path, checkpoint, "--slide-mpp", "0.5")) == 2  # the tissue thumbnail is refused
    err = capsys.readouterr().err
    assert "giant.tif stores no level coarser" in err and "Traceback" not in err


@pytest.mark.timeout(60)
def test_a_large_flat_tiff_under_the_limit_keeps_its_lazy_levels(tmp_path: Path) -> None:
    from protoseg.slide import open_slide

    with open_slide(_flat_tiff(tmp_path / "large.tif", 40_000)) as slide:
        levels = slide.pyramid_arrays()
        assert len(levels) > 1 and max(levels[-1][0].shape[:2]) <= 1024
