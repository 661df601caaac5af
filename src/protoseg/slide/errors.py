"""Exceptions of protoseg.slide: one base class so callers (e.g. the napari reader) catch one type."""

from __future__ import annotations

from protoseg.errors import ProtosegError

#: File extensions that :func:`protoseg.slide.open_slide` accepts (lower case).
SUPPORTED_EXTENSIONS: tuple[str, ...] = (
    ".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide",
    ".dcm", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg",
)


class SlideError(ProtosegError):
    """Base class of every error raised by protoseg.slide."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class UnsupportedSlideError(SlideError):
    """No backend reads this kind of file (unknown extension, or a format/flavour we cannot show)."""


class CorruptSlideError(SlideError):
    """The file has a supported extension but cannot be decoded (truncated, random bytes, damaged)."""


class MissingMppError(SlideError):
    """A physical resolution (mpp) was requested but the slide does not record one."""


class SlideRequestError(SlideError, ValueError):
    """Invalid arguments for a read (bad level, negative size, closed slide...)."""
