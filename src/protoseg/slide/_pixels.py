"""Small pixel helpers shared by the slide backends: RGBA->RGB on white, area resizing."""

from __future__ import annotations

import numpy as np


def rgba_to_rgb(arr: np.ndarray) -> np.ndarray:
    """Return a contiguous (H, W, 3) uint8 image; alpha (non-premultiplied) is composited on white."""
    arr = np.asarray(arr)
    if arr.ndim == 2:
        return np.ascontiguousarray(np.repeat(arr[:, :, None], 3, axis=2).astype(np.uint8, copy=False))
    if arr.shape[2] == 3:
        return np.ascontiguousarray(arr, dtype=np.uint8)
    if arr.shape[2] != 4:
        raise ValueError(f"expected an RGB or RGBA image, got {arr.shape[2]} channels")
    alpha = arr[:, :, 3]
    rgb = arr[:, :, :3]
    if alpha.size == 0 or alpha.min() == 255:
        return np.ascontiguousarray(rgb, dtype=np.uint8)
    a = alpha.astype(np.uint16)[:, :, None]
    # out = rgb * a/255 + 255 * (1 - a/255), rounded to nearest
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


def resize_rgb(arr: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image to ``size`` = (w, h): area averaging when shrinking, bilinear else."""
    from PIL import Image

    w, h = int(size[0]), int(size[1])
    if arr.shape[1] == w and arr.shape[0] == h:
        return arr
    if arr.size == 0 or w == 0 or h == 0:
        return np.full((h, w, 3), 255, np.uint8)
    shrink = w <= arr.shape[1] and h <= arr.shape[0]
    resample = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(arr).resize((w, h), resample=resample))


def pil_to_rgb(img: "Image.Image") -> np.ndarray:  # noqa: F821 - PIL imported lazily
    """PIL image -> (H, W, 3) uint8 with transparency composited on white (C-speed PIL path)."""
    from PIL import Image

    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    if img.getchannel("A").getextrema()[0] < 255:
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return np.asarray(img.convert("RGB"))
