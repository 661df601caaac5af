"""TileGrid geometry (coverage, order, overlap, mpp, tissue filter) and the tissue mask."""

from __future__ import annotations

import numpy as np
import pytest

from protoseg.slide import MissingMppError, TileGrid, TissueMask, open_slide, tissue_mask
from slide_fixtures import make_pyramid, real_tiles


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path, _ = make_pyramid(tmp_path_factory.mktemp("tiles") / "t.tif", 300, 500, mpp=0.5, tile_size=128)
    with open_slide(path) as s:
        yield s


def _coverage(tiles, w, h) -> np.ndarray:
    cover = np.zeros((h, w), np.int32)
    for t in tiles:
        cover[t.y : t.y + t.h, t.x : t.x + t.w] += 1
    return cover


def test_grid_covers_slide_exactly_in_reading_order(slide) -> None:
    tiles = TileGrid(128).tiles(slide)
    assert tiles.shape == (3, 4) and len(tiles) == 12
    assert [(t.row, t.col) for t in tiles] == [(r, c) for r in range(3) for c in range(4)]
    assert (_coverage(tiles, 500, 300) == 1).all()  # no gap, no overlap, nothing outside
    last = tiles[-1]
    assert last.box == (384, 256, 116, 44) and last.size == (116, 44)  # clipped, not padded
    assert tiles[0].size == (128, 128) and tiles[0].tissue_fraction is None


def test_overlap(slide) -> None:
    tiles = TileGrid(128, overlap=28).tiles(slide)
    xs = sorted({t.x for t in tiles})
    assert xs == [0, 100, 200, 300, 400]  # stride 100; last tile [400, 500) ends on the edge
    cover = _coverage(tiles, 500, 300)
    assert cover.min() >= 1
    assert (cover[0, 100:128] == 2).all() and (cover[0, 128:200] == 1).all()


def test_mpp_scaling(slide) -> None:
    grid = TileGrid(64, mpp=1.0)  # slide is 0.5 um/px: 64 output px = 128 level-0 px
    tiles = grid.tiles(slide)
    assert grid.scale(slide) == 2.0 and tiles.shape == (3, 4)
    assert tiles[0].box == (0, 0, 128, 128) and tiles[0].size == (64, 64)
    assert tiles[-1].box == (384, 256, 116, 44) and tiles[-1].size == (58, 22)
    assert (_coverage(tiles, 500, 300) == 1).all()
    px = tiles.read(tiles[5])
    assert px.shape == (64, 64, 3)
    ref = slide.read_level(1, (tiles[5].x // 2, tiles[5].y // 2), (64, 64))
    np.testing.assert_array_equal(px, ref)
    # non-integer scale still tiles the slide exactly
    odd = TileGrid(50, overlap=7, mpp=0.83).tiles(slide)
    assert _coverage(odd, 500, 300).min() >= 1 and all(t.x + t.w <= 500 and t.y + t.h <= 300 for t in odd)


def test_mpp_grid_needs_mpp(tmp_path) -> None:
    path, _ = make_pyramid(tmp_path / "n.tif", 200, 200, mpp=None, tile_size=128)
    with open_slide(path) as s:
        with pytest.raises(MissingMppError):
            TileGrid(64, mpp=1.0).tiles(s)
        assert TileGrid(64, mpp=1.0).tiles(s, fallback_mpp=0.25).shape == (1, 1)


def test_tissue_filter_and_fraction(slide) -> None:
    mask = np.zeros((30, 50), bool)
    mask[:, :10] = True  # left 100 level-0 pixels are tissue (downsample 10)
    tissue = TissueMask(mask=mask, downsample=10.0)
    assert tissue.fraction(0, 0, 100, 100) == 1.0
    assert tissue.fraction(50, 0, 100, 300) == pytest.approx(0.5)
    assert tissue.fraction(600, 0, 10, 10) == 0.0
    # brute-force reference on random boxes
    rng = np.random.default_rng(0)
    rnd = TissueMask(mask=rng.random((30, 50)) > 0.5, downsample=10.0)
    for x, y, w, h in rng.integers(0, 250, (20, 4)):
        sub = rnd.mask[y // 10 : -(-(y + w) // 10), x // 10 : -(-(x + h) // 10)]
        assert rnd.fraction(x, y, h, w) == pytest.approx(sub.mean() if sub.size else 0.0)
    tiles = TileGrid(128, min_tissue=0.5).tiles(slide, tissue)
    assert [(t.row, t.col) for t in tiles] == [(0, 0), (1, 0), (2, 0)]
    assert tiles.shape == (3, 4) and tiles[0].tissue_fraction == pytest.approx(100 / 130, abs=0.01)


def test_tissue_mask_on_real_tiles() -> None:
    fractions = {}
    for path in real_tiles():
        with open_slide(path) as s:
            tm = tissue_mask(s, max_size=256)  # 2x thumbnail keeps the test fast
            assert tm.mask.dtype == bool and tm.mask.shape == (256, 256) and tm.downsample == 2.0
            fractions[path.stem] = tm.tissue_fraction
    for name, f in fractions.items():
        if name.startswith("tissue-"):
            assert f > 0.4, (name, f)
        if name.startswith(("no-tissue", "almost-white")) and name != "no-tissue-red-pen":
            assert f < 0.03, (name, f)  # includes the green pen
    assert fractions["no-tissue-green-pen"] < 0.01


def test_tissue_mask_on_generated_slide(tmp_path) -> None:
    rgb = np.full((400, 600, 3), 240, np.uint8)
    rgb[100:300, 150:450] = (180, 90, 160)  # an H&E-pink block on glass
    from protoseg.slide.writer import write_pyramidal_tiff

    write_pyramidal_tiff(tmp_path / "blob.tif", rgb, 0.5, tile_size=128, compression=None)
    with open_slide(tmp_path / "blob.tif") as s:
        tm = tissue_mask(s, max_size=150)
        assert tm.downsample == pytest.approx(4.0)
        assert tm.fraction(150, 100, 300, 200) > 0.97 and tm.fraction(0, 0, 140, 400) == 0.0
        grid = TileGrid(100, min_tissue=0.6).tiles(s)  # mask computed automatically; cols 1, 4 are 50%
        assert {(t.row, t.col) for t in grid} == {(r, c) for r in (1, 2) for c in (2, 3)}
