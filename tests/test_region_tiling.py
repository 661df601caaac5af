"""Tagged regions -> training patches: dense tiling at the training patch size and mpp, counts per class,
and the regions too small for a patch named before training."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from protoseg.classes import ClassSpec
from protoseg.config import load_config
from protoseg.data.errors import RegionError
from protoseg.data.region_dataset import dense_stride, tile_region_source, tile_regions
from protoseg.data.regions import RegionAnnotation, RegionSource

SPEC = ClassSpec(names=("TUM", "STR", "LYM"))


class _Slide:
    mpp, level_count, level_dimensions, level_downsamples = 0.25, 1, ((4000, 4000),), (1.0,)

    def __init__(self, path: str) -> None:
        self.path = path

    def read_region(self, location, level, size):
        return np.full((size[1], size[0], 3), 200, np.uint8)

    def close(self) -> None:
        pass


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)


def _source(mpp: float = 0.5) -> RegionSource:
    regions = (
        RegionAnnotation(_rect(0, 0, 1600, 800), ("TUM",), "a.svs"),  # 400 x 200 µm
        RegionAnnotation(_rect(1600, 0, 2400, 800), ("STR",), "a.svs"),  # 200 x 200 µm, touches the first
        RegionAnnotation(_rect(3000, 3000, 3100, 3060), ("LYM",), "a.svs"),  # 25 x 15 µm: too small
    )
    return RegionSource("r", regions, SPEC, mpp)


def test_dense_tiling_counts_follow_the_training_patch_size() -> None:
    src = _source()
    small = tile_region_source(src, patch_size=100, slide_opener=_Slide)  # 50 µm patches, stride 25 µm
    large = tile_region_source(src, patch_size=200, slide_opener=_Slide)  # 100 µm patches, stride 50 µm
    assert small.stride == dense_stride(100) == 50
    # a 400 x 200 µm rectangle holds (400-50)/25+1 = 15 x 7 patches of 50 µm at half-patch stride
    assert small.per_region[:2] == (15 * 7, 7 * 7)
    assert large.per_region[:2] == (7 * 3, 3 * 3)
    assert small.per_class == {"TUM": 105, "STR": 49, "LYM": 0}  # tiles at the shared border: exact overlap 0
    assert len(small.patches) == sum(small.per_region)
    # non-overlapping tiling (the dataset default) gives fewer patches: 8 x 4
    assert tile_regions(src.regions, SPEC, 0.5, 100, slide_opener=_Slide).per_region[0] == 8 * 4
    for tiling in (small, large):
        assert [r.index for r in tiling.too_small] == [2] and tiling.too_small[0].classes == ("LYM",)
        assert tiling.too_small[0].width_um == pytest.approx(25.0)
    text = large.summary()
    assert "200 px at 0.5 µm/px" in text and "TUM 21" in text and "region 3 (LYM) on a.svs" in text
    assert "smaller than one 100 µm patch" in text


def test_patch_straddling_two_regions_gets_both_tags() -> None:
    regions = [
        RegionAnnotation(_rect(0, 0, 400, 400), ("TUM",), "a.svs"),
        RegionAnnotation(_rect(300, 0, 700, 400), ("STR", "LYM"), "a.svs"),
    ]
    tiling = tile_regions(regions, SPEC, 0.25, 200, stride=100, slide_opener=_Slide)
    labels = {p.box[:2]: p.label for p in tiling.patches}
    assert labels[(200, 0)] == (1, 1, 1) and labels[(0, 0)] == (1, 0, 0) and labels[(500, 0)] == (0, 1, 1)


def test_unknown_tags_and_bad_sizes_are_refused() -> None:
    with pytest.raises(RegionError, match="not classes"):
        tile_regions([RegionAnnotation(_rect(0, 0, 9, 9), ("XYZ",), "a")], SPEC, 0.5, 64, slide_opener=_Slide)
    with pytest.raises(RegionError, match="positive"):
        tile_regions([], SPEC, 0.5, 0)


def test_training_data_uses_dense_tiles_and_refuses_only_tiny_regions(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from protoseg.train.pipeline import region_data

    monkeypatch.setattr("protoseg.data.region_tiling._default_opener", _Slide)
    cfg = load_config(None, ["data.patch_size=100", "data.augment=false"])
    src = _source()
    with caplog.at_level(logging.INFO, logger="protoseg.train.data_setup"):
        data = region_data(cfg, list(src.regions), SPEC, src.mpp)
    assert len(data.train) == 105 + 49
    assert "TUM 105, STR 49, LYM 0" in caplog.text and "region 3 (LYM)" in caplog.text
    with pytest.raises(RegionError, match="no training patches"):
        region_data(cfg, [src.regions[2]], SPEC, src.mpp)
