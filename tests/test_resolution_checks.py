"""Every resolution (mpp) is range-checked where it enters (issue 22 item 10): checkpoint load, slide
metadata, command-line options, the run config and library calls; one-line errors, never a traceback."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile

from protoseg.cli import main
from protoseg.config_ranges import MPP, MPP_SCALE

BAD_MPPS = [0.0, math.nan, math.inf, -0.5, 1e-6, 1e6]


def _checkpoint(path: Path, mpp: Any) -> Path:
    """A weightless checkpoint whose only interesting field is ``mpp`` (loading never builds the model)."""
    from protoseg.classes import BCSS_WSSS
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint

    save_checkpoint(Checkpoint(Stage.STAGE2, {"kind": "segnet"}, {}, BCSS_WSSS, mpp=mpp, patch_size=32), path)
    return path


def _tiled_tiff(path: Path, **kw: Any) -> Path:
    """A small tiled RGB TIFF (one level) with the given tifffile ``write`` options (description, resolution)."""
    rgb = np.full((64, 64, 3), (180, 90, 160), np.uint8)
    tifffile.imwrite(path, rgb, tile=(64, 64), photometric="rgb", metadata=None, **kw)
    return path


@pytest.mark.parametrize("mpp", [*BAD_MPPS, "0.5"])
def test_checkpoint_with_an_impossible_mpp_is_refused_naming_it(tmp_path: Path, mpp: Any) -> None:
    from protoseg.models.checkpoint import CheckpointError, load_checkpoint

    path = _checkpoint(tmp_path / "m.pt", mpp)
    with pytest.raises(CheckpointError, match=r"m\.pt: mpp=") as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value) and "train again" in str(err.value)


def test_checkpoint_mpp_in_range_loads(tmp_path: Path) -> None:
    from protoseg.models.checkpoint import load_checkpoint

    assert load_checkpoint(_checkpoint(tmp_path / "m.pt", 0.25)).mpp == 0.25
    assert load_checkpoint(_checkpoint(tmp_path / "n.pt", None)).mpp is None


def test_cli_predict_with_such_a_checkpoint_is_one_line(tmp_path: Path, capsys: Any) -> None:
    slide = _tiled_tiff(tmp_path / "s.tif", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    ckpt = _checkpoint(tmp_path / "m.pt", 1e-6)
    assert main(["predict", str(slide), "-c", str(ckpt), "-o", str(tmp_path / "out"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "m.pt: mpp=1e-06 is out of range" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("value", ["1e-6", "1e6", "nan", "0", "-1"])
def test_slide_mpp_option_is_range_checked(value: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["predict", "s.svs", "-c", "m.pt", "-o", "out", "--slide-mpp", value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument --slide-mpp: must be a finite number {MPP.describe()}" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "kw",
    [
        {"description": "Aperio Image Library v12.0.5\n64x64 -> 64x64 - |AppMag = 20|MPP = 999999"},
        {"description": "Aperio Image Library v12.0.5\n64x64 -> 64x64 - |AppMag = 20|MPP = 0.000001"},
        {"resolution": (1e-2, 1e-2), "resolutionunit": "CENTIMETER"},  # 1e6 µm per pixel
    ],
    ids=["aperio-999999", "aperio-1e-6", "resolution-tag"],
)
def test_implausible_slide_metadata_counts_as_unknown_with_a_warning(tmp_path: Path, kw: dict, caplog: Any) -> None:
    from protoseg.slide import open_slide

    path = _tiled_tiff(tmp_path / ("x.svs" if "description" in kw else "x.tif"), **kw)
    with caplog.at_level(logging.WARNING, logger="protoseg.slide"), open_slide(path) as slide:
        assert slide.mpp is None
    assert any(str(path) in r.getMessage() and "treated as unknown" in r.getMessage() for r in caplog.records)


def test_prediction_on_such_a_slide_asks_for_slide_mpp(tmp_path: Path) -> None:
    from protoseg.infer.reader import resolve_resolution
    from protoseg.slide import MissingMppError, open_slide

    path = _tiled_tiff(tmp_path / "x.svs", description="Aperio Image Library v12\n64x64 -> 64x64 - |MPP = 999999")
    with open_slide(path) as slide, pytest.raises(MissingMppError, match="x.svs has no microns-per-pixel.*--slide-mpp"):
        resolve_resolution(slide, 0.5)


def test_plausible_slide_metadata_is_kept(tmp_path: Path) -> None:
    from protoseg.slide import open_slide

    path = _tiled_tiff(tmp_path / "x.svs", description="Aperio Image Library v12\n64x64 -> 64x64 - |MPP = 0.2527")
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.2527)


def test_library_resolutions_are_checked_where_they_enter() -> None:
    from protoseg.infer.errors import InferenceError
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.reader import resolve_resolution
    from protoseg.slide import MissingMppError

    image = np.full((32, 32, 3), 200, np.uint8)
    with pytest.raises(MissingMppError, match="slide mpp of tissue"):
        resolve_resolution(ArraySlide(image, mpp=1e-6, name="tissue"), 0.5)
    with pytest.raises(MissingMppError, match="--slide-mpp"):
        resolve_resolution(ArraySlide(image, name="tissue"), 0.5, slide_mpp=float("nan"))
    with pytest.raises(InferenceError, match="model mpp=0"):
        resolve_resolution(ArraySlide(image, mpp=0.5), 0.0)
    # each plausible alone, but 100x apart: one of them is wrong (and the read would be 100x the slide)
    with pytest.raises(InferenceError, match=r"tissue at 50 µm/px would be resampled 100x .*check --slide-mpp"):
        resolve_resolution(ArraySlide(image, mpp=50.0, name="tissue"), 0.5)
    assert resolve_resolution(ArraySlide(image, mpp=0.25), 0.5).scale == pytest.approx(2.0)
    assert MPP_SCALE.problem(1 / 16) is None and MPP_SCALE.problem(64) is None


def test_run_config_regions_and_reads_check_mpp(tmp_path: Path) -> None:
    from protoseg.classes import BCSS_WSSS
    from protoseg.config import ConfigError, load_config
    from protoseg.data.errors import RegionError
    from protoseg.data.regions import RegionSource
    from protoseg.slide import SlideRequestError, open_slide

    with pytest.raises(ConfigError, match="run.mpp"):
        load_config(None, ["run.mpp=1e-6"])
    with pytest.raises(RegionError, match="patch mpp"):
        RegionSource("tags", (), BCSS_WSSS, mpp=0.0)
    with pytest.raises(RegionError, match="slides' mpp"):
        RegionSource("tags", (), BCSS_WSSS, mpp=0.5, fallback_mpp=1e6)
    path = _tiled_tiff(tmp_path / "s.tif", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")  # 0.5 µm/px
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        with pytest.raises(SlideRequestError, match="mpp=1e-06"):
            slide.read((0, 0, 64, 64), mpp=1e-6)
