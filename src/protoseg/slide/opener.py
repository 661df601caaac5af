"""``open_slide``: pick the fastest backend for a path by its format and compression, or the one asked for.

Order: tiled JPEG / uncompressed / deflate TIFFs (generic, SVS, OME) -> direct tifffile reads, then
openslide, then tiffslide; JPEG 2000 and vendor formats -> openslide, then tiffslide; images -> Pillow.
``open_slide(path, backend=...)`` or the ``PROTOSEG_SLIDE_BACKEND`` environment variable forces one.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from protoseg.slide.backends import (
    Backend,
    ImageBackend,
    OpenSlideBackend,
    SlideBackend,
    TiffSlideBackend,
)
from protoseg.slide.errors import (
    CorruptSlideError,
    SlideError,
    SlideNotFoundError,
    UnsupportedSlideError,
)
from protoseg.slide.formats import SUPPORTED_EXTENSIONS
from protoseg.slide.slide import Slide

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
#: environment variable that forces a backend for every ``open_slide`` without ``backend=``
BACKEND_ENV = "PROTOSEG_SLIDE_BACKEND"
_TIFF_EXTENSIONS = (".tif", ".tiff", ".svs", ".ome.tif", ".ome.tiff", ".ndpi", ".scn", ".bif")
#: TIFF-based vendor formats whose layout (stitching, offsets) only openslide understands
_VENDOR_EXTENSIONS = (".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".vmu", ".svslide", ".dcm")


def _tifffile_backend(path: Path) -> SlideBackend:
    from protoseg.slide.tiff_direct import TiffFileBackend

    return TiffFileBackend(path)


_FACTORIES: dict[Backend, Any] = {
    Backend.OPENSLIDE: OpenSlideBackend,
    Backend.TIFFSLIDE: TiffSlideBackend,
    Backend.TIFFFILE: _tifffile_backend,
    Backend.IMAGE: ImageBackend,
}


def _extension(path: Path) -> str:
    name = path.name.lower()
    for ext in sorted(SUPPORTED_EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return ext
    return path.suffix.lower()


def _is_tiff(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _validate(backend: SlideBackend, path: Path) -> None:
    """Decode two small windows (last tile of level 0, first of the last level) to catch damage early."""
    w0, h0 = backend.level_dimensions[0]
    if w0 <= 0 or h0 <= 0:
        raise CorruptSlideError(f"{path} reports an empty image ({w0}x{h0}); re-export it")
    tw, th = backend.tile_size(0)
    n = min(16, tw, th)
    backend.read(0, max(0, (w0 - 1) // tw * tw), max(0, (h0 - 1) // th * th), min(n, w0), min(n, h0))
    last = len(backend.level_dimensions) - 1
    lw, lh = backend.level_dimensions[last]
    backend.read(last, 0, 0, min(n, lw), min(n, lh))


def _candidates(path: Path, ext: str) -> list[Backend]:
    """Backends to try, fastest first for this file (see the module docstring)."""
    if ext in IMAGE_EXTENSIONS:
        return [Backend.IMAGE]
    if not (_is_tiff(path) or ext in _TIFF_EXTENSIONS):
        return [Backend.OPENSLIDE]
    if ext in _VENDOR_EXTENSIONS:
        return [Backend.OPENSLIDE, Backend.TIFFSLIDE]
    from protoseg.slide.tiff_direct import DIRECT_COMPRESSIONS, first_page_compression

    if first_page_compression(path) in DIRECT_COMPRESSIONS:
        return [Backend.TIFFFILE, Backend.OPENSLIDE, Backend.TIFFSLIDE]
    return [Backend.OPENSLIDE, Backend.TIFFSLIDE]


def _try(kind: Backend, path: Path) -> SlideBackend:
    backend = _FACTORIES[kind](path)
    try:
        _validate(backend, path)
    except BaseException:
        backend.close()
        raise
    return backend


def open_slide(path: str | Path, backend: Backend | str | None = None) -> Slide:
    """Open a slide, choosing the backend automatically unless ``backend`` forces one.

    Raises SlideNotFoundError, UnsupportedSlideError (extension or flavour nobody reads) or
    CorruptSlideError (supported extension but undecodable); never a raw library exception.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise SlideNotFoundError(f"slide not found: {path}; check the path")
    ext = _extension(path)
    if not path.is_dir() and not path.is_file():  # a FIFO, device or socket: reading it could block forever
        raise UnsupportedSlideError(
            f"{path} is not a regular file (a FIFO, device or socket); pass the slide file itself"
        )
    if path.is_dir() or ext not in SUPPORTED_EXTENSIONS:
        raise UnsupportedSlideError(
            f"{path.name}: unsupported slide type {ext or '(no extension)'!r}; supported extensions: "
            + " ".join(SUPPORTED_EXTENSIONS)
        )
    if backend is None and os.environ.get(BACKEND_ENV):
        backend = os.environ[BACKEND_ENV]
    if backend is not None:
        try:
            kind = Backend(str(getattr(backend, "value", backend)).strip().lower())
        except ValueError:
            raise UnsupportedSlideError(
                f"unknown slide backend {backend!r} (argument or {BACKEND_ENV}); use one of "
                + ", ".join(b.value for b in Backend)
            ) from None
        try:
            found = _try(kind, path)
        except SlideError:
            raise
        except Exception as exc:  # any library error becomes ours
            raise CorruptSlideError(
                f"{path.name} could not be read with {kind.value} ({exc}); the file may be damaged, "
                "re-export or re-download it"
            ) from exc
        return Slide(path, found)

    failures: list[str] = []
    last_exc: BaseException | None = None
    for kind in _candidates(path, ext):
        try:
            found = _try(kind, path)
        except UnsupportedSlideError as exc:
            failures.append(f"{kind.value}: {exc}")
            last_exc = exc
            if kind is Backend.TIFFSLIDE:  # the last resort read the file but cannot show it
                raise
            continue
        except Exception as exc:  # noqa: BLE001 - try the next backend, report all at the end
            failures.append(f"{kind.value}: {exc}")
            last_exc = exc
            continue
        logger.debug("opened %s with %s", path, kind.value)
        return Slide(path, found)
    raise CorruptSlideError(
        f"{path.name} has a supported extension ({ext}) but no backend could decode it; the file is "
        "probably damaged or truncated: re-export or re-download it. Details: " + "; ".join(failures)
    ) from last_exc
