"""The slide file types protoseg opens: the one list every reader, file dialog and manifest derives from.

``napari.yaml`` cannot import Python, so its reader ``filename_patterns`` repeat this tuple (plus the
``*.zarr`` prediction folders); tests/test_slide_formats.py keeps the two equal.

Two kinds of extension: whole-slide formats (:data:`WHOLE_SLIDE_EXTENSIONS`) are slides by name, while the
plain image types (:data:`PLAIN_IMAGE_EXTENSIONS`) are slides only when their header says RGB(A) slide
(:func:`is_rgb_slide_image`); a fluorescence stack or a greyscale picture is someone else's image.
"""

from __future__ import annotations

import logging
from pathlib import Path

logger = logging.getLogger(__name__)

#: File extensions that :func:`protoseg.slide.open_slide` accepts (lower case, with the dot).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".svs",
    ".tif",
    ".tiff",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
    ".ome.tif",
    ".ome.tiff",
    ".png",
    ".jpg",
    ".jpeg",
)
#: Extensions that are whole-slide formats by themselves (vendor formats, DICOM, OME-TIFF).
WHOLE_SLIDE_EXTENSIONS: tuple[str, ...] = (
    ".svs",
    ".ndpi",
    ".mrxs",
    ".scn",
    ".bif",
    ".vms",
    ".vmu",
    ".svslide",
    ".dcm",
    ".ome.tif",
    ".ome.tiff",
)
#: Everyday image types: a slide only when :func:`is_rgb_slide_image` says so.
PLAIN_IMAGE_EXTENSIONS: tuple[str, ...] = (".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_RGB = frozenset({2, 6})  # TIFF Photometric RGB, YCbCr (JPEG-compressed RGB)


def slide_stem(path: object) -> str:
    """File name without its slide extension (``a.ome.tif`` -> ``a``); other names lose their last suffix."""
    name = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    low = name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if low.endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)]
    return name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name


def is_slide_path(path: object) -> bool:
    """Whether the file name ends with one of ``SUPPORTED_EXTENSIONS`` (case-insensitive; no I/O)."""
    return str(path).lower().endswith(SUPPORTED_EXTENSIONS)


def is_whole_slide_path(path: object) -> bool:
    """Whether the file name ends with a whole-slide extension (``.svs``, ``.ome.tif``, ...; no I/O)."""
    return str(path).lower().endswith(WHOLE_SLIDE_EXTENSIONS)


def is_rgb_slide_image(path: str | Path) -> bool:
    """Whether a plain image file (.tif/.tiff/.png/.jpg/.jpeg) is an RGB(A) 8-bit slide, from its header only:
    a tiled or pyramidal RGB(A) TIFF or a single 2-D RGB(A) picture; stacks, greyscale and 16-bit are not."""
    path = Path(path)
    low = path.name.lower()
    if is_whole_slide_path(low) or not low.endswith(PLAIN_IMAGE_EXTENSIONS) or not path.is_file():
        return False  # not a plain image type, or not a regular file (a FIFO would block the header read)
    try:
        return _tiff_is_rgb_slide(path) if low.endswith((".tif", ".tiff")) else _picture_is_rgb(path)
    except Exception as exc:  # noqa: BLE001 - unreadable header: not ours, let other readers decide
        logger.debug("%s: header not readable as an image (%s)", path, exc)
        return False


def _tiff_is_rgb_slide(path: Path) -> bool:
    """First IFD RGB(A) uint8 and the file is one 2-D image, a tiled image or a pyramid (not a stack)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        rgb = int(page.photometric) in _TIFF_RGB and page.samplesperpixel in (3, 4) and page.dtype == "uint8"
        if not rgb:
            return False
        try:
            second = tif.pages[1]
        except IndexError:
            return True  # one 2-D RGB(A) image
        if page.subifds or getattr(second, "is_reduced", False):
            return True  # pyramid: reduced-resolution pages follow level 0
        return tuple(second.shape) != tuple(page.shape)  # smaller pages (thumbnail, levels): not a stack


def _picture_is_rgb(path: Path) -> bool:
    """A single-frame PNG/JPEG whose pixels are 8-bit RGB or RGBA (Pillow reads the header only)."""
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("RGB", "RGBA") or getattr(im, "n_frames", 1) != 1:
            return False
        args = im.tile[0][3] if im.tile else im.mode  # the decoder's raw mode, e.g. "RGB;16B"
        rawmode = args[0] if isinstance(args, tuple) else args
        return ";16" not in str(rawmode)  # 16-bit PNG channels are shown as mode RGB too
