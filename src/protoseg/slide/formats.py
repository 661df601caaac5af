"""The slide file types protoseg opens: the one list every reader, file dialog and manifest derives from.

``napari.yaml`` cannot import Python, so its reader ``filename_patterns`` repeat this tuple (plus the
``*.zarr`` prediction folders); tests/test_slide_formats.py keeps the two equal.
"""

from __future__ import annotations

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
