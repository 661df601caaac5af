"""Slide-wide tile grid and chunk grid at the model's resolution (pure geometry, no I/O).

Every prediction (a region, a lazy chunk, a batch chunk) uses the same global tile grid anchored
at the slide origin, so the blended value of a pixel never depends on which box asked for it.
Tile ``k`` along an axis starts at ``k * stride - overlap // 2``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from protoseg.infer.errors import InferenceError

Box = tuple[int, int, int, int]  # (x, y, w, h)
TileIndex = tuple[int, int]  # (row, col)


@dataclass(frozen=True)
class PredictionGrid:
    """Tiles of ``tile`` px overlapping by ``overlap`` px covering a ``width`` x ``height`` image."""

    width: int
    height: int
    tile: int
    overlap: int

    def __post_init__(self) -> None:
        if self.width < 1 or self.height < 1:
            raise InferenceError(f"prediction size must be positive, got {self.width}x{self.height}")
        if self.tile < 1 or not 0 <= self.overlap < self.tile:
            raise InferenceError(
                f"need tile >= 1 and 0 <= overlap < tile, got tile={self.tile}, overlap={self.overlap}"
            )

    @property
    def stride(self) -> int:
        return self.tile - self.overlap

    @property
    def margin(self) -> int:
        return self.overlap // 2

    def _count(self, length: int) -> int:
        return max(1, math.ceil((length + self.margin - self.tile) / self.stride) + 1)

    @property
    def shape(self) -> tuple[int, int]:
        """Number of tiles (rows, cols)."""
        return self._count(self.height), self._count(self.width)

    def origin(self, index: TileIndex) -> tuple[int, int]:
        """Top-left (x, y) of a tile; may be negative or extend past the image (padded when read)."""
        r, c = index
        return c * self.stride - self.margin, r * self.stride - self.margin

    def _range(self, start: int, length: int, count: int) -> range:
        lo = (start - self.tile + self.margin) // self.stride + 1
        hi = -((-(start + length + self.margin)) // self.stride) - 1
        return range(max(lo, 0), min(hi, count - 1) + 1)

    def tiles_for_box(self, box: Box) -> list[TileIndex]:
        """Row-major list of tiles intersecting ``box`` (x, y, w, h)."""
        x, y, w, h = box
        rows, cols = self.shape
        return [(r, c) for r in self._range(y, h, rows) for c in self._range(x, w, cols)]


@dataclass(frozen=True)
class ChunkGrid:
    """Square chunks of ``chunk`` px over a ``width`` x ``height`` image (edge chunks clipped)."""

    width: int
    height: int
    chunk: int

    @property
    def shape(self) -> tuple[int, int]:
        return -(-self.height // self.chunk), -(-self.width // self.chunk)

    def box(self, cy: int, cx: int) -> Box:
        x, y = cx * self.chunk, cy * self.chunk
        return x, y, min(self.chunk, self.width - x), min(self.chunk, self.height - y)

    def __iter__(self):
        rows, cols = self.shape
        return ((r, c) for r in range(rows) for c in range(cols))

    def __len__(self) -> int:
        rows, cols = self.shape
        return rows * cols
