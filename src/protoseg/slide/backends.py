"""Slide backends (openslide, tiffslide, plain images) behind one small interface in level coordinates.

Backends only see in-bounds reads (``Slide`` clips and pads with white) and return (h, w, 3) uint8.
Thread safety: the OpenSlide C library is documented thread-safe, so one handle is shared; tiffslide
(tifffile file handles) gets one handle per thread; plain images are decoded once into a read-only array.
"""

from __future__ import annotations

import enum
import logging
import math
import threading
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.slide.errors import CorruptSlideError, SlideRequestError, UnsupportedSlideError
from protoseg.slide.pixels import as_rgb_uint8

logger = logging.getLogger(__name__)

DEFAULT_TILE = 512


class Backend(str, enum.Enum):
    """Which library reads the slide file."""

    OPENSLIDE = "openslide"
    TIFFSLIDE = "tiffslide"
    TIFFFILE = "tifffile"  # direct tile reads (protoseg.slide.tiff_direct), the fastest for JPEG/raw TIFFs
    IMAGE = "image"


def _parse_float(value: Any) -> float | None:
    """Positive finite float from a property value, else None (mpp/objective are never invented)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) and f > 0 else None


def _mpp_from(props: dict[str, str], prefix: str) -> float | None:
    """Mean of ``{prefix}.mpp-x`` and ``-y`` (or whichever exists)."""
    vals = [v for v in (_parse_float(props.get(f"{prefix}.mpp-x")), _parse_float(props.get(f"{prefix}.mpp-y"))) if v]
    return float(sum(vals) / len(vals)) if vals else None


class SlideBackend(ABC):
    """Minimal reader interface: geometry, metadata and in-bounds reads at level coordinates."""

    kind: Backend
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    properties: dict[str, str]
    mpp: float | None
    objective_power: float | None
    associated_names: tuple[str, ...]

    @abstractmethod
    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        """Read an in-bounds (h, w, 3) uint8 window whose top-left is (lx, ly) in level pixels."""

    @abstractmethod
    def associated(self, name: str) -> np.ndarray:
        """Decode an associated image (label, macro, thumbnail) as RGB uint8."""

    def tile_size(self, level: int) -> tuple[int, int]:
        """Native (w, h) tile size of a level from the properties, else DEFAULT_TILE."""
        prefix = self.kind.value
        tw = _parse_float(self.properties.get(f"{prefix}.level[{level}].tile-width"))
        th = _parse_float(self.properties.get(f"{prefix}.level[{level}].tile-height"))
        if tw and th:
            return int(tw), int(th)
        return DEFAULT_TILE, DEFAULT_TILE

    @abstractmethod
    def close(self) -> None:
        """Release file handles."""


class OpenSlideBackend(SlideBackend):
    """openslide-python (with openslide-bin) reader; one shared, thread-safe handle."""

    kind = Backend.OPENSLIDE

    def __init__(self, path: Path) -> None:
        import openslide

        self._errors = (openslide.OpenSlideError,)
        self._path = path
        try:
            self._osr = openslide.OpenSlide(str(path))
        except openslide.OpenSlideUnsupportedFormatError as exc:
            raise UnsupportedSlideError(f"openslide does not recognise {path}") from exc
        except (openslide.OpenSlideError, OSError) as exc:
            raise CorruptSlideError(f"openslide cannot decode {path}: {exc}") from exc
        self.level_dimensions = tuple(tuple(map(int, d)) for d in self._osr.level_dimensions)  # type: ignore[misc]
        self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
        self.properties = {str(k): str(v) for k, v in self._osr.properties.items()}
        self.mpp = _mpp_from(self.properties, "openslide")
        self.objective_power = _parse_float(self.properties.get("openslide.objective-power"))
        self.associated_names = tuple(self._osr.associated_images.keys())

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        x0, y0 = round(lx * ds), round(ly * ds)  # nearest level-0 point; exact for integer downsamples
        try:
            img = self._osr.read_region((x0, y0), level, (w, h))
        except self._errors as exc:
            raise CorruptSlideError(
                f"{self._path} is damaged (openslide: {exc}); re-export or re-download the slide"
            ) from exc
        return as_rgb_uint8(img)

    def associated(self, name: str) -> np.ndarray:
        try:
            return as_rgb_uint8(self._osr.associated_images[name])
        except self._errors as exc:
            raise CorruptSlideError(f"associated image {name!r} of {self._path} is damaged: {exc}") from exc

    def close(self) -> None:
        self._osr.close()


class TiffSlideBackend(SlideBackend):
    """tiffslide (tifffile) reader; one handle per thread because tifffile handles are not shared-safe."""

    kind = Backend.TIFFSLIDE

    def __init__(self, path: Path) -> None:
        self._path = path
        self._local = threading.local()
        self._handles: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        ts = self._handle()
        self.level_dimensions = tuple(tuple(map(int, d)) for d in ts.level_dimensions)  # type: ignore[misc]
        self.level_downsamples = tuple(float(d) for d in ts.level_downsamples)
        self.properties = {str(k): str(v) for k, v in ts.properties.items() if v is not None}
        self.mpp = _mpp_from(self.properties, "tiffslide")
        self.objective_power = _parse_float(self.properties.get("tiffslide.objective-power"))
        try:
            self.associated_names = tuple(ts.associated_images.keys())
        except Exception:
            logger.warning("could not list associated images of %s", path, exc_info=True)
            self.associated_names = ()

    def _handle(self) -> Any:
        """This thread's TiffSlide handle (opened on first use)."""
        ts = getattr(self._local, "ts", None)
        if ts is None:
            import tiffslide

            if self._closed:
                raise SlideRequestError(f"slide {self._path} is closed")
            try:
                ts = tiffslide.TiffSlide(str(self._path))
            except Exception as exc:  # tifffile raises many types for damaged files
                raise CorruptSlideError(
                    f"tiffslide cannot decode {self._path}: {exc}; the file may be damaged, re-export or re-download it"
                ) from exc
            self._local.ts = ts
            with self._lock:
                self._handles.append(ts)
        return ts

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        ds = self.level_downsamples[level]
        # tiffslide maps level-0 -> level with int(x / ds): pick the smallest x0 that lands on lx exactly
        x0, y0 = math.ceil(lx * ds), math.ceil(ly * ds)
        x0 += int(x0 / ds) < lx
        y0 += int(y0 / ds) < ly
        try:
            arr = self._handle().read_region((x0, y0), level, (w, h), as_array=True)
        except (CorruptSlideError, SlideRequestError):
            raise
        except Exception as exc:
            raise CorruptSlideError(
                f"{self._path} is damaged (tiffslide: {exc}); re-export or re-download the slide"
            ) from exc
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
            raise UnsupportedSlideError(
                f"{self._path} holds {arr.dtype} pixels with shape {arr.shape}; only 8-bit RGB(A) "
                "brightfield slides are supported"
            )
        return as_rgb_uint8(arr)

    def associated(self, name: str) -> np.ndarray:
        try:
            img = self._handle().associated_images[name]
        except Exception as exc:
            raise CorruptSlideError(f"associated image {name!r} of {self._path} is damaged: {exc}") from exc
        return as_rgb_uint8(img)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for ts in self._handles:
                ts.close()
            self._handles.clear()


class ImageBackend(SlideBackend):
    """A PNG/JPEG (anything Pillow decodes) as a one-level slide without mpp."""

    kind = Backend.IMAGE

    def __init__(self, path: Path) -> None:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode not in ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "I;16", "I", "F"):
                    raise UnsupportedSlideError(f"{path} has image mode {im.mode}; expected RGB(A)")
                arr = np.asarray(im.convert("RGBA") if im.mode != "RGB" else im)
        except UnidentifiedImageError as exc:
            raise CorruptSlideError(
                f"{path} is not a decodable image (damaged or not really {path.suffix}); re-export it"
            ) from exc
        except Image.DecompressionBombError as exc:
            raise UnsupportedSlideError(
                f"{path} is too large for a plain image; convert it to a pyramidal TIFF"
            ) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise CorruptSlideError(f"{path} is damaged ({exc}); re-export or re-download it") from exc
        self._rgb = as_rgb_uint8(arr)
        self._rgb.setflags(write=False)
        h, w = self._rgb.shape[:2]
        self.level_dimensions = ((w, h),)
        self.level_downsamples = (1.0,)
        self.properties = {"image.width": str(w), "image.height": str(h), "image.mode": "RGB"}
        self.mpp = None
        self.objective_power = None
        self.associated_names = ()

    def read(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        return self._rgb[ly : ly + h, lx : lx + w].copy()

    def associated(self, name: str) -> np.ndarray:
        raise KeyError(name)

    def close(self) -> None:
        pass
