"""Lazy whole-slide image access: backends, zarr/dask pyramids, reads at an mpp, tissue mask, tile grid.

Entry point: ``open_slide(path, backend=None) -> Slide``. Errors (all derive from ``SlideError``,
itself a ``protoseg.errors.ProtosegError``):

- ``SlideNotFoundError``: the path does not exist (also a ``FileNotFoundError``).
- ``UnsupportedSlideError``: extension nobody reads (the message lists ``SUPPORTED_EXTENSIONS``), a
  format openslide does not recognise when forced, or non-RGB pixel data.
- ``CorruptSlideError``: supported extension but the bytes cannot be decoded (truncated, random,
  damaged); re-export or re-download the file. Raised by ``open_slide`` and by later reads.
- ``MissingMppError``: ``Slide.read(..., mpp=...)`` or an mpp ``TileGrid`` on a slide without mpp
  and without ``fallback_mpp``.
- ``SlideRequestError`` (also ``ValueError``): bad level, negative size, closed slide.
"""

from __future__ import annotations

from protoseg.slide.backends import Backend
from protoseg.slide.errors import (
    SUPPORTED_EXTENSIONS,
    CorruptSlideError,
    MissingMppError,
    SlideError,
    SlideNotFoundError,
    SlideRequestError,
    UnsupportedSlideError,
)
from protoseg.slide.opener import open_slide
from protoseg.slide.slide import Slide
from protoseg.slide.tiles import Tile, TileGrid, TileSet
from protoseg.slide.tissue import TissueMask, tissue_mask
from protoseg.slide.writer import write_pyramidal_tiff, write_pyramidal_tiff_from_tiles

__all__ = [
    "SUPPORTED_EXTENSIONS",
    "Backend",
    "CorruptSlideError",
    "MissingMppError",
    "Slide",
    "SlideError",
    "SlideNotFoundError",
    "SlideRequestError",
    "Tile",
    "TileGrid",
    "TileSet",
    "TissueMask",
    "UnsupportedSlideError",
    "open_slide",
    "tissue_mask",
    "write_pyramidal_tiff",
    "write_pyramidal_tiff_from_tiles",
]
