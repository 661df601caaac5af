"""``as_rgb_uint8``: the one normaliser that turns any picture protoseg meets into (H, W, 3) uint8 RGB.

Slide backends, in-memory slides, bank patches and napari layers all go through it, so transparency,
grey images and float images are treated the same everywhere.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from protoseg.slide.errors import ImageFormatError


def as_rgb_uint8(image: Any) -> np.ndarray:
    """A contiguous (H, W, 3) uint8 RGB copy or view of ``image``.

    Accepts numpy arrays (or anything ``np.asarray`` understands, PIL images included) shaped
    (H, W) or (H, W, 1) grey, (H, W, 2) grey + alpha, (H, W, 3) RGB or (H, W, 4) RGBA, of dtype:

    - uint8: used as is;
    - float: values in [0, 1], scaled by 255, rounded and clipped (NaN becomes 0);
    - bool: False -> 0, True -> 255;
    - other integers: must already lie in 0..255.

    Alpha is non-premultiplied and composited on white (``rgb * a + 255 * (1 - a)``, rounded), the
    colour of glass and of pixels outside a slide. PIL images are converted by PIL to RGB (opaque
    modes, or fully opaque alpha: the C-speed path for openslide tiles) or to RGBA, then composited;
    16-bit grey images (``I;16`` modes) are scaled to 8 bits (``round(v * 255 / 65535)``), 32-bit
    integer ones (``I``) follow the integer rule above.
    Raises ``ImageFormatError`` (a ``ValueError``) for other shapes or out-of-range integers.
    """
    if hasattr(image, "getchannel") and hasattr(image, "mode"):  # PIL.Image.Image
        image = _pil_array(image)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise ImageFormatError(
            f"expected a grey, RGB or RGBA image shaped (H, W), (H, W, 1|2|3|4); got shape {arr.shape}"
        )
    arr = _to_uint8(arr)
    channels = arr.shape[2]
    if channels in (2, 4):
        colour, alpha = arr[:, :, : channels - 1], arr[:, :, channels - 1 :]
        if alpha.size and alpha.min() < 255:
            a = alpha.astype(np.uint16)
            # rgb * a/255 + 255 * (1 - a/255), rounded to nearest
            colour = ((colour.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)
        arr = colour
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr)


def _to_uint8(arr: np.ndarray) -> np.ndarray:
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == np.bool_:
        return arr.astype(np.uint8) * np.uint8(255)
    if np.issubdtype(arr.dtype, np.floating):
        return np.rint(np.clip(np.nan_to_num(arr, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.integer):
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise ImageFormatError(
                f"{arr.dtype} image values span {arr.min()}..{arr.max()}; expected 0..255 (or floats in [0, 1])"
            )
        return arr.astype(np.uint8)
    raise ImageFormatError(f"unsupported image dtype {arr.dtype}; expected uint8, float in [0, 1] or bool")


_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
#: PIL modes of 16-bit grey images; PIL's own ``convert("RGB")`` saturates them (every value > 255 is white).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def scale_16_to_8(arr: np.ndarray) -> np.ndarray:
    """uint16 values 0..65535 -> uint8 0..255, rounded to nearest (65535 -> 255, 32768 -> 128)."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _pil_array(img: Any) -> np.ndarray:
    """PIL image -> RGB array when fully opaque (C-speed), else the RGBA array for the compositor; 16-bit
    grey scaled to uint8 grey and 32-bit integer grey as int32 (``_to_uint8`` checks its range)."""
    if img.mode == "RGB":
        return np.asarray(img)
    if img.mode in SIXTEEN_BIT_MODES:
        return scale_16_to_8(np.asarray(img))
    if img.mode == "I":
        return np.asarray(img)
    if img.mode not in _ALPHA_MODES and "transparency" not in img.info:
        return np.asarray(img.convert("RGB"))
    if img.mode != "RGBA":
        img = img.convert("RGBA")
    if img.getchannel("A").getextrema()[0] == 255:
        return np.asarray(img.convert("RGB"))
    return np.asarray(img)
