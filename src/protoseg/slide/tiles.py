"""``TileGrid``: enumerate tiles of a slide at a target mpp, with overlap and a tissue filter."""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

import numpy as np

from protoseg.slide.errors import MissingMppError
from protoseg.slide.resample import read_at_scale

if TYPE_CHECKING:
    from protoseg.slide.slide import Slide
    from protoseg.slide.tissue import TissueMask


@dataclass(frozen=True)
class Tile:
    """One grid tile: level-0 ``box`` (x, y, w, h), output ``size`` (w, h) at the grid mpp, grid position."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]
    row: int
    col: int
    tissue_fraction: float | None = None

    @property
    def x(self) -> int:
        return self.box[0]

    @property
    def y(self) -> int:
        return self.box[1]

    @property
    def w(self) -> int:
        return self.box[2]

    @property
    def h(self) -> int:
        return self.box[3]


def _axis(length: int, t0: float, s0: float) -> list[tuple[int, int, bool]]:
    """(start, length, clipped) along one axis so that the tiles cover [0, length) exactly."""
    n = 1 if length <= t0 else math.ceil((length - t0) / s0 - 1e-9) + 1
    out = []
    for i in range(n):
        start = round(i * s0)
        end = round(i * s0 + t0)
        out.append((start, min(end, length) - start, end > length))
    return out


@dataclass(frozen=True)
class TileGrid:
    """Square tiles of ``tile_size`` output pixels at ``mpp`` (None = level 0), ``overlap`` pixels shared."""

    tile_size: int
    overlap: int = 0
    mpp: float | None = None
    min_tissue: float = 0.0

    def __post_init__(self) -> None:
        if self.tile_size <= 0:
            raise ValueError(f"tile_size must be > 0, got {self.tile_size}")
        if not 0 <= self.overlap < self.tile_size:
            raise ValueError(f"overlap must be in [0, tile_size), got {self.overlap}")
        if self.mpp is not None and not self.mpp > 0:
            raise ValueError(f"mpp must be > 0 or None, got {self.mpp}")
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue is a fraction in [0, 1], got {self.min_tissue}")

    def scale(self, slide: Slide, fallback_mpp: float | None = None) -> float:
        """Level-0 pixels per output pixel (1 when ``mpp`` is None)."""
        if self.mpp is None:
            return 1.0
        base = slide.mpp if slide.mpp is not None else fallback_mpp
        if base is None:
            raise MissingMppError(
                f"{slide.path.name} records no microns-per-pixel, so a {self.mpp} um/px grid is "
                "ambiguous; pass fallback_mpp=<um/px of level 0> or use TileGrid(mpp=None)"
            )
        return self.mpp / base

    def _axes(self, slide: Slide, fallback_mpp: float | None) -> tuple[list, list]:
        f = self.scale(slide, fallback_mpp)
        t0, s0 = self.tile_size * f, (self.tile_size - self.overlap) * f
        w0, h0 = slide.dimensions
        return _axis(h0, t0, s0), _axis(w0, t0, s0)

    def shape(self, slide: Slide, fallback_mpp: float | None = None) -> tuple[int, int]:
        """(rows, cols) of the full grid, before the tissue filter."""
        rows, cols = self._axes(slide, fallback_mpp)
        return len(rows), len(cols)

    def tiles(self, slide: Slide, tissue: TissueMask | None = None, fallback_mpp: float | None = None) -> TileSet:
        """Tiles in reading order (row-major); with ``min_tissue`` > 0 only those with enough tissue.

        When ``min_tissue`` > 0 and no ``tissue`` mask is given, one is computed with ``tissue_mask``.
        """
        if tissue is None and self.min_tissue > 0:
            from protoseg.slide.tissue import tissue_mask

            tissue = tissue_mask(slide)
        f = self.scale(slide, fallback_mpp)
        rows, cols = self._axes(slide, fallback_mpp)
        tiles: list[Tile] = []
        for r, (y, h, clip_y) in enumerate(rows):
            out_h = max(1, round(h / f)) if clip_y else self.tile_size
            for c, (x, w, clip_x) in enumerate(cols):
                out_w = max(1, round(w / f)) if clip_x else self.tile_size
                frac = None if tissue is None else tissue.fraction(x, y, w, h)
                if self.min_tissue > 0 and frac is not None and frac < self.min_tissue:
                    continue
                tiles.append(Tile((x, y, w, h), (out_w, out_h), r, c, frac))
        return TileSet(tuple(tiles), (len(rows), len(cols)), slide, self)


class TileSet(Sequence[Tile]):
    """The tiles chosen by a ``TileGrid`` for one slide; ``shape`` is the full grid (rows, cols)."""

    def __init__(
        self,
        tiles: tuple[Tile, ...],
        shape: tuple[int, int],
        slide: Slide,
        grid: TileGrid,
    ) -> None:
        self._tiles = tiles
        self.shape = shape
        self.slide = slide
        self.grid = grid

    @overload
    def __getitem__(self, i: int) -> Tile: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Tile]: ...
    def __getitem__(self, i: int | slice) -> Tile | Sequence[Tile]:
        return self._tiles[i]

    def __len__(self) -> int:
        return len(self._tiles)

    def __iter__(self) -> Iterator[Tile]:
        return iter(self._tiles)

    def read(self, tile: Tile) -> np.ndarray:
        """Pixels of ``tile`` at the grid mpp, exactly ``tile.size`` (h, w, 3) uint8 (one resampling)."""
        return read_at_scale(self.slide, tile.box, tile.size)
