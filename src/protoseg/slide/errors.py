"""Exceptions of protoseg.slide: one base class so callers (e.g. the napari reader) catch one type."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class SlideError(ProtosegError):
    """Base class of every error raised by protoseg.slide."""


class SlideNotFoundError(SlideError, FileNotFoundError):
    """The slide path does not exist."""


class UnsupportedSlideError(SlideError):
    """No backend reads this kind of file (unknown extension, or a format/flavour we cannot show)."""


class CorruptSlideError(SlideError):
    """The file has a supported extension but cannot be decoded (truncated, random bytes, damaged)."""


class MissingMppError(SlideError):
    """A physical resolution (mpp) was needed but the slide records none and none was given.

    The one missing-mpp error of protoseg: ``Slide.read``, ``TileGrid`` and inference
    (``protoseg.infer``, whose messages name ``--slide-mpp``) all raise it.
    """


class ImageFormatError(SlideError, ValueError):
    """An array or image is not a grey, RGB or RGBA picture (see ``protoseg.slide.pixels.as_rgb_uint8``)."""


class SlideRequestError(SlideError, ValueError):
    """Invalid arguments for a read (bad level, negative size, closed slide...)."""
