"""Lazy whole-slide image access: backends, dask pyramids, reads at an mpp, tissue mask, tile grid.

Entry point: ``open_slide(path, backend=None) -> Slide``. Any level-0 box of a slide (or of any
``SlideLike`` stand-in) is read at another resolution by ``read_at_scale``; every picture is
normalised to (H, W, 3) uint8 RGB by ``as_rgb_uint8``; ``SUPPORTED_EXTENSIONS`` lists the file types: whole-slide
formats by name (``is_whole_slide_path``), plain .tif/.png/.jpg only when RGB(A) slides (``is_rgb_slide_image``).

Errors (all derive from ``SlideError``, itself a ``protoseg.errors.ProtosegError``):

- ``SlideNotFoundError``: the path does not exist (also a ``FileNotFoundError``).
- ``UnsupportedSlideError``: extension nobody reads (the message lists ``SUPPORTED_EXTENSIONS``), a
  format openslide does not recognise when forced, or non-RGB pixel data.
- ``CorruptSlideError``: supported extension but the bytes cannot be decoded (truncated, random,
  damaged); re-export or re-download the file. Raised by ``open_slide`` and by later reads.
- ``MissingMppError``: ``Slide.read(..., mpp=...)`` or an mpp ``TileGrid`` on a slide without mpp
  and without ``fallback_mpp`` (inference raises the same class).
- ``ImageFormatError`` (also ``ValueError``): ``as_rgb_uint8`` got something that is not a picture.
- ``SlideRequestError`` (also ``ValueError``): bad level, negative size, closed slide.
"""

from __future__ import annotations

from protoseg.slide.backends import Backend
from protoseg.slide.errors import (
    CorruptSlideError,
    ImageFormatError,
    MissingMppError,
    SlideError,
    SlideNotFoundError,
    SlideRequestError,
    UnsupportedSlideError,
)
from protoseg.slide.formats import (
    PLAIN_IMAGE_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    WHOLE_SLIDE_EXTENSIONS,
    is_rgb_slide_image,
    is_slide_path,
    is_whole_slide_path,
)
from protoseg.slide.opener import open_slide
from protoseg.slide.pixels import as_rgb_uint8
from protoseg.slide.resample import SlideLike, read_at_scale
from protoseg.slide.slide import Slide
from protoseg.slide.tiles import Tile, TileGrid, TileSet
from protoseg.slide.tissue import TissueMask, tissue_mask
from protoseg.slide.writer import write_pyramidal_tiff, write_pyramidal_tiff_from_tiles

__all__ = [
    "PLAIN_IMAGE_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "WHOLE_SLIDE_EXTENSIONS",
    "Backend",
    "CorruptSlideError",
    "ImageFormatError",
    "MissingMppError",
    "Slide",
    "SlideError",
    "SlideLike",
    "SlideNotFoundError",
    "SlideRequestError",
    "Tile",
    "TileGrid",
    "TileSet",
    "TissueMask",
    "UnsupportedSlideError",
    "as_rgb_uint8",
    "is_rgb_slide_image",
    "is_slide_path",
    "is_whole_slide_path",
    "open_slide",
    "read_at_scale",
    "tissue_mask",
    "write_pyramidal_tiff",
    "write_pyramidal_tiff_from_tiles",
]
