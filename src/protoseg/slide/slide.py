"""``Slide``: one opened whole-slide image with levels, mpp, region reads and a lazy dask pyramid."""

from __future__ import annotations

import logging
import math
import threading
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from protoseg.config_ranges import MPP, check_value
from protoseg.slide.backends import Backend, SlideBackend
from protoseg.slide.errors import MissingMppError, SlideRequestError, UnsupportedSlideError
from protoseg.slide.lazy_pyramid import ChunkCache
from protoseg.slide.resample import best_level, read_at_scale

if TYPE_CHECKING:
    import dask.array

    from protoseg.slide.array import SlideLevelArray

logger = logging.getLogger(__name__)


def plausible_mpp(value: float | None, path: Path) -> float | None:
    """A slide file's mpp when it lies in ``config_ranges.MPP``; an implausible one (e.g. ``MPP = 999999``)
    counts as unknown, with a warning naming the file, so the user is asked for it like any slide without mpp."""
    if value is None or MPP.problem(value) is None:
        return value
    logger.warning(
        "%s records %g µm per pixel, which is not %s: treated as unknown; give the slide's resolution "
        "(--slide-mpp, or in the docks when asked)",
        path,
        value,
        MPP.describe(),
    )
    return None


class _AssociatedImages(Mapping[str, np.ndarray]):
    """Read-only mapping name -> RGB uint8 array, decoded on first access and cached."""

    def __init__(self, backend: SlideBackend) -> None:
        self._backend = backend
        self._cache: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        if name not in self._backend.associated_names:
            raise KeyError(name)
        if name not in self._cache:
            self._cache[name] = self._backend.associated(name)
        return self._cache[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._backend.associated_names)

    def __len__(self) -> int:
        return len(self._backend.associated_names)


class Slide:
    """An opened slide. Coordinates are level-0 pixels (x, y), sizes (w, h); pixels (h, w, 3) uint8."""

    def __init__(self, path: Path, backend: SlideBackend) -> None:
        self.path = path
        self._backend = backend
        self._closed = False
        self._views: dict[int, SlideLevelArray] = {}
        self._pyramids: dict[int, list[dask.array.Array]] = {}
        self._lock = threading.RLock()
        self._chunk_cache = ChunkCache()
        self._mpp = plausible_mpp(backend.mpp, path)
        self.associated_images: Mapping[str, np.ndarray] = _AssociatedImages(backend)

    # ---- metadata -------------------------------------------------------------------------------
    @property
    def backend(self) -> Backend:
        """Which library reads this slide."""
        return self._backend.kind

    @property
    def level_count(self) -> int:
        return len(self._backend.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """(width, height) per level, level 0 first."""
        return self._backend.level_dimensions

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height)."""
        return self._backend.level_dimensions[0]

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        """Downsample of each level relative to level 0, as recorded by the file."""
        return self._backend.level_downsamples

    @property
    def mpp(self) -> float | None:
        """Level-0 microns per pixel (mean of x and y), or None when the file records none or an implausible one."""
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return self._backend.objective_power

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._backend.properties)

    def tile_size(self, level: int) -> tuple[int, int]:
        """Native (w, h) tile size of a level (512 for untiled files and plain images)."""
        self._check_level(level)
        return self._backend.tile_size(level)

    def best_level_for_downsample(self, downsample: float) -> int:
        """Coarsest level whose downsample is <= ``downsample`` (1% tolerance); 0 if none."""
        return best_level(self.level_downsamples, downsample)

    # ---- pixels ---------------------------------------------------------------------------------
    def read_level(self, level: int, location: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        """Read (h, w, 3) uint8 at ``level`` with top-left ``location`` in *level* pixels; outside is white."""
        self._check_open()
        self._check_level(level)
        lx, ly = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        if w < 0 or h < 0:
            raise SlideRequestError(f"region size must be >= 0, got {size}")
        lw, lh = self.level_dimensions[level]
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if x0 == lx and y0 == ly and x1 - x0 == w and y1 - y0 == h and w and h:
            return self._backend.read(level, lx, ly, w, h)
        out = np.full((h, w, 3), 255, np.uint8)
        if x1 > x0 and y1 > y0:
            out[y0 - ly : y1 - ly, x0 - lx : x1 - lx] = self._backend.read(level, x0, y0, x1 - x0, y1 - y0)
        return out

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """openslide-style read: ``location`` in level-0 pixels, ``size`` (w, h) in ``level`` pixels."""
        self._check_level(level)
        ds = self.level_downsamples[level]
        lx, ly = math.floor(location[0] / ds + 1e-9), math.floor(location[1] / ds + 1e-9)
        return self.read_level(level, (lx, ly), size)

    def read(
        self,
        region: tuple[int, int, int, int],
        mpp: float | None = None,
        level: int | None = None,
        fallback_mpp: float | None = None,
    ) -> np.ndarray:
        """Pixels of the level-0 box ``(x, y, w, h)`` at ``mpp`` (or at ``level``, or level 0).

        The output is ``round(w / downsample)`` x ``round(h / downsample)`` pixels, read from the coarsest
        level with downsample <= the needed one and resampled by ``protoseg.slide.resample.read_at_scale``
        (area averaging with a sub-pixel box; unchanged pixels when the box is on the level's grid).
        Raises MissingMppError when ``mpp`` is given but the slide has none and no ``fallback_mpp``.
        """
        x, y, w, h = (int(v) for v in region)
        if w < 0 or h < 0:
            raise SlideRequestError(f"region size must be >= 0, got {(w, h)}")
        if mpp is None:
            lvl = 0 if level is None else level
            self._check_level(lvl)
            ds = self.level_downsamples[lvl]
            out_size = (max(1, round(w / ds)) if w else 0, max(1, round(h / ds)) if h else 0)
            target_ds = ds
        else:
            base = self.mpp if self.mpp is not None else fallback_mpp
            if base is None:
                raise MissingMppError(
                    f"{self.path.name} records no microns-per-pixel, so a read at {mpp} um/px is "
                    "ambiguous; pass fallback_mpp=<um/px of level 0> (e.g. 0.5 for 20x) or read by level"
                )
            check_value("mpp", mpp, MPP, SlideRequestError)
            check_value(f"{self.path.name}: fallback_mpp", base, MPP, SlideRequestError)
            target_ds = mpp / base
            lvl = self.best_level_for_downsample(target_ds) if level is None else level
            self._check_level(lvl)
            out_size = (max(1, round(w / target_ds)) if w else 0, max(1, round(h / target_ds)) if h else 0)
        self._check_open()
        return read_at_scale(self, (x, y, w, h), out_size, level=lvl)

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Whole slide downscaled (area) so that its longer side is at most ``max_size``."""
        w0, h0 = self.dimensions
        scale = max(w0, h0) / max_size
        if scale <= 1:
            return self.read_level(0, (0, 0), (w0, h0))
        self._check_open()
        self._check_overview_source(self.best_level_for_downsample(scale))
        return read_at_scale(self, (0, 0, w0, h0), (max(1, round(w0 / scale)), max(1, round(h0 / scale))))

    # ---- lazy arrays ----------------------------------------------------------------------------
    def level_pixels(self, level: int) -> SlideLevelArray:
        """Thread-safe numpy-style view of one level (any slice = one backend read); cached per level."""
        from protoseg.slide.array import SlideLevelArray

        self._check_open()
        self._check_level(level)
        with self._lock:
            if level not in self._views:
                self._views[level] = SlideLevelArray(self, level)
            return self._views[level]

    def pyramid_arrays(self, chunk: int | None = None) -> list[tuple[Any, int, float]]:
        """(array-like, chunk side, downsample) per pyramid level: stored levels, then lazy 2x levels.

        Stored levels are chunked by a multiple of their native tile near ``VIEW_CHUNK`` (1024 px)
        unless ``chunk`` is given; lazy levels (see ``protoseg.slide.lazy_pyramid``) are added while the
        coarsest level's longer side exceeds ``COARSEST_SIDE``, so every zoom reads about one screen.
        """
        from protoseg.slide.lazy_pyramid import DownsampledLevelArray, lazy_level_shapes, viewer_chunk

        self._check_open()
        out: list[tuple[Any, int, float]] = []
        for lvl in range(self.level_count):
            tw, th = self.tile_size(lvl)
            c = int(chunk) if chunk else viewer_chunk(max(tw, th))
            out.append((self.level_pixels(lvl), c, float(self.level_downsamples[lvl])))
        parent, c, ds = out[-1]
        w, h = self.level_dimensions[-1]
        if lazy_level_shapes(w, h):
            self._check_overview_source(self.level_count - 1)
        with self._lock:
            cache = self._chunk_cache
        for k, _shape in enumerate(lazy_level_shapes(w, h), start=1):
            parent = DownsampledLevelArray(parent, c, cache, key=("lazy", c, k))
            out.append((parent, c, ds * 2**k))
        return out

    def pyramid_downsamples(self, chunk: int | None = None) -> tuple[float, ...]:
        """Downsample (level-0 px per pixel) of each ``dask_pyramid`` level, lazy levels included."""
        return tuple(ds for _, _, ds in self.pyramid_arrays(chunk))

    def dask_pyramid(self, chunk: int | None = None) -> list[dask.array.Array]:
        """Lazy (H, W, 3) uint8 dask arrays: the stored levels, then lazy 2x levels (``pyramid_arrays``).

        Chunks are viewer-sized (a multiple of the native tile near 1024 px; ``chunk`` overrides) and
        each chunk, or any slice of one, is ONE backend read through ``level_pixels``. The arrays are
        built once per slide and chunk size, so repeated calls share dask keys (and napari's cache).
        """
        self._check_open()
        key = int(chunk or 0)
        with self._lock:
            cached = self._pyramids.get(key)
        if cached is not None:
            return list(cached)
        import dask.array as da

        token = uuid.uuid4().hex[:16]  # unique per Slide object: keys never collide across slides
        meta = np.empty((0, 0, 0), np.uint8)
        # inline_array keeps slicing O(chunks touched): without it dask culls the whole
        # (possibly 40k-chunk) graph on every napari slice; meta avoids a probe read at build time
        pyramid = [
            da.from_array(
                view,
                chunks=(min(c, view.shape[0]) or 1, min(c, view.shape[1]) or 1, 3),
                name=f"protoseg-slide-{token}-{key}-{lvl}",
                asarray=False,
                lock=False,
                inline_array=True,
                meta=meta,
            )
            for lvl, (view, c, _) in enumerate(self.pyramid_arrays(chunk))
        ]
        with self._lock:
            return list(self._pyramids.setdefault(key, pyramid))

    # ---- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handles; later reads raise SlideRequestError."""
        if not self._closed:
            self._closed = True
            self._backend.close()

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Slide({str(self.path)!r}, backend={self.backend.value}, levels={self.level_dimensions}, mpp={self.mpp})"
        )

    def _check_overview_source(self, level: int) -> None:
        """UnsupportedSlideError when an overview would be reduced from ``level`` and it is larger than
        ``lazy_pyramid.MAX_OVERVIEW_PIXELS`` (a giant flat image: every one of its pixels would be decoded)."""
        from protoseg.slide.lazy_pyramid import MAX_OVERVIEW_PIXELS

        w, h = self.level_dimensions[level]
        if w * h > MAX_OVERVIEW_PIXELS:
            raise UnsupportedSlideError(
                f"{self.path.name} stores no level coarser than {w} x {h} px, too large to reduce to an overview "
                f"(at most {MAX_OVERVIEW_PIXELS:,} px); convert it to a pyramidal TIFF, e.g. "
                f"`vips tiffsave {self.path.name} pyramid.tif --tile --pyramid --compression jpeg`"
            )

    def _check_level(self, level: int) -> None:
        if not 0 <= int(level) < self.level_count:
            raise SlideRequestError(f"level {level} does not exist; this slide has levels 0..{self.level_count - 1}")

    def _check_open(self) -> None:
        if self._closed:
            raise SlideRequestError(f"slide {self.path} is closed; open it again with open_slide()")
