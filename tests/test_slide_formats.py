"""One list of slide extensions (the napari manifest's reader patterns are derived from it), and which plain
images are RGB slides by their header."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from protoseg.slide import (
    PLAIN_IMAGE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    WHOLE_SLIDE_EXTENSIONS,
    is_rgb_slide_image,
    is_slide_path,
    is_whole_slide_path,
)
from slide_fixtures import IMAGES, write_images

MANIFEST = Path(__file__).resolve().parents[1] / "src" / "protoseg" / "napari.yaml"


def test_napari_reader_patterns_equal_supported_extensions_plus_prediction_folders() -> None:
    yaml = pytest.importorskip("yaml")
    readers = yaml.safe_load(MANIFEST.read_text())["contributions"]["readers"]
    assert len(readers) == 1
    assert readers[0]["filename_patterns"] == [f"*{ext}" for ext in SUPPORTED_EXTENSIONS] + ["*.zarr"]


def test_is_slide_path() -> None:
    assert all(ext == ext.lower() and ext.startswith(".") for ext in SUPPORTED_EXTENSIONS)
    assert is_slide_path("/a/B.SVS") and is_slide_path("x.ome.tiff") and is_slide_path(Path("y.png"))
    assert not is_slide_path("pred.zarr") and not is_slide_path("notes.txt")


def test_whole_slide_and_plain_image_extensions_split_the_supported_ones() -> None:
    assert set(WHOLE_SLIDE_EXTENSIONS) | set(PLAIN_IMAGE_EXTENSIONS) == set(SUPPORTED_EXTENSIONS)
    assert not set(WHOLE_SLIDE_EXTENSIONS) & set(PLAIN_IMAGE_EXTENSIONS)
    assert is_whole_slide_path("a.SVS") and is_whole_slide_path("b.ome.tiff") and is_whole_slide_path("c.mrxs")
    assert not is_whole_slide_path("d.tif") and not is_whole_slide_path("e.png")


def test_plain_images_are_slides_only_when_their_header_says_rgb(tmp_path: Path) -> None:
    files = write_images(tmp_path)
    assert {name: is_rgb_slide_image(path) for name, path in files.items()} == IMAGES
    assert not is_rgb_slide_image(tmp_path / "missing.png") and not is_rgb_slide_image(tmp_path / "x.svs")


def test_rgb_check_reads_the_header_not_the_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 20000 x 20000 RGB TIFF (a sparse file: its pixels were never written) is classified from its tags alone."""
    import tifffile

    path = tmp_path / "huge.tif"
    image = tifffile.memmap(path, shape=(20000, 20000, 3), dtype=np.uint8, photometric="rgb", bigtiff=True)
    del image  # the file now has its tags and 1.2 GB of unwritten (sparse) pixel space

    def no_pixels(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the RGB check decoded pixels")

    monkeypatch.setattr(tifffile.TiffPage, "asarray", no_pixels)
    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_pixels)
    assert is_rgb_slide_image(path)
