"""Helpers for slide tests: generated pyramidal TIFFs and the optional real data folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SLIDES = DATA / "slides"
TILES = DATA / "tiles"


def real_slide(name: str) -> Path:
    """Path of a real slide in the shared data folder, or skip the test when it is absent."""
    path = SLIDES / name
    if not path.exists():
        pytest.skip(f"real test slide {name} not found under {SLIDES} (shared data folder absent)")
    return path


def real_tiles() -> list[Path]:
    """The real 512x512 RGBA tiles, or skip when the shared data folder is absent."""
    tiles = sorted(TILES.glob("*.png")) if TILES.exists() else []
    if not tiles:
        pytest.skip(f"real test tiles not found under {TILES} (shared data folder absent)")
    return tiles


def smooth_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth pseudo-random RGB content (JPEG-friendly, so lossy levels stay close to the source)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        fx, fy, ph = rng.uniform(0.005, 0.03), rng.uniform(0.005, 0.03), rng.uniform(0, 6.28)
        out[..., c] = 128 + 100 * np.sin(xx * fx + ph) * np.cos(yy * fy)
    return out.clip(0, 255).astype(np.uint8)


def make_pyramid(
    path: Path,
    h: int = 600,
    w: int = 1000,
    mpp: float | None = 0.5,
    tile_size: int = 128,
    compression: str | None = "jpeg",
    n_levels: int | None = None,
    seed: int = 0,
) -> tuple[Path, np.ndarray]:
    """Write a pyramidal TIFF with protoseg's writer; return (path, level-0 source pixels)."""
    from protoseg.slide.writer import write_pyramidal_tiff

    rgb = smooth_rgb(h, w, seed)
    write_pyramidal_tiff(path, rgb, mpp, tile_size=tile_size, n_levels=n_levels, compression=compression)
    return path, rgb


def write_images(root: Path) -> dict[str, Path]:
    """One file per kind a user may open: RGB slides (picture, tiled, pyramid) and others' images."""
    import tifffile
    from PIL import Image

    rgb = (np.random.default_rng(0).random((300, 400, 3)) * 255).astype(np.uint8)
    files = {name: root / name for name in IMAGES}
    Image.fromarray(rgb).save(files["rgb.png"])
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(files["rgba.png"])
    Image.fromarray(rgb).save(files["rgb.jpg"])
    Image.fromarray(rgb[..., 0]).save(files["grey.png"])
    Image.fromarray(rgb[..., 0]).save(files["grey.jpg"])
    Image.fromarray(rgb).convert("P").save(files["palette.png"])
    tifffile.imwrite(files["rgb.tif"], rgb)  # one strip-organised 2-D RGB picture
    tifffile.imwrite(files["tiled.tif"], rgb, tile=(128, 128))
    with tifffile.TiffWriter(files["pyramid.tiff"]) as tif:  # level 0 + a reduced-resolution page
        tif.write(rgb, tile=(128, 128))
        tif.write(rgb[::2, ::2], tile=(128, 128), subfiletype=1)
    tifffile.imwrite(files["fluo.tif"], np.zeros((5, 64, 80), np.uint16))  # 3-D uint16 fluorescence stack
    tifffile.imwrite(files["grey.tif"], rgb[..., 0], tile=(128, 128))
    tifffile.imwrite(files["rgb16.tif"], rgb.astype(np.uint16), photometric="rgb")
    tifffile.imwrite(files["rgbstack.tif"], np.stack([rgb] * 3), photometric="rgb")  # a time series
    files["junk.png"].write_bytes(b"not an image at all")
    return files


#: file name -> whether protoseg takes it for an RGB slide
IMAGES = {
    "rgb.png": True,
    "rgba.png": True,
    "rgb.jpg": True,
    "rgb.tif": True,
    "tiled.tif": True,
    "pyramid.tiff": True,
    "grey.png": False,
    "grey.jpg": False,
    "palette.png": False,
    "fluo.tif": False,
    "grey.tif": False,
    "rgb16.tif": False,
    "rgbstack.tif": False,
    "junk.png": False,
}
