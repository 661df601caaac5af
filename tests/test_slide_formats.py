"""One list of slide extensions: the napari manifest's reader patterns are derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from protoseg.slide import SUPPORTED_EXTENSIONS, is_slide_path

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
