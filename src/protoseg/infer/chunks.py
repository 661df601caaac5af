"""The chunk layout of a slide prediction, shared by the lazy pyramid and the batch writer.

Both compute a level-0 chunk the same way (global tiles -> blend -> quantise) and coarse chunks
from the same 2x2 finer chunks, so their outputs are identical.
"""

from __future__ import annotations

import itertools
import logging
from concurrent.futures import Executor
from typing import Any, Protocol

import numpy as np

from protoseg.infer.grid import Box, ChunkGrid, TileIndex
from protoseg.infer.predictor import Predictor
from protoseg.infer.pyramid import ChunkData, background_chunk, chunk_from_scores, level_shapes
from protoseg.infer.reader import SlideLike, open_any

logger = logging.getLogger(__name__)

DEFAULT_CHUNK = 512


def chunk_from_device_scores(probs: Any) -> ChunkData:
    """``pyramid.chunk_from_scores`` for a torch tensor: quantise and argmax on its device, then copy back
    only the uint8 scores and mask (through pinned memory on CUDA). Same bytes as the numpy version."""
    import torch

    from protoseg.infer.device import to_host

    q = torch.round(probs * 255.0).clamp_(0, 255).to(torch.uint8)
    mask = torch.argmax(probs, dim=0).to(torch.uint8)
    return ChunkData(to_host(q), to_host(mask))


class TissueLike(Protocol):
    """What ``protoseg.slide.tissue_mask`` returns: tissue fraction of a level-0 box."""

    def fraction(self, x: int, y: int, w: int, h: int) -> float: ...


class SlideChunks:
    """Chunk grid + tissue filter + level shapes of one slide's prediction at the model mpp."""

    def __init__(
        self,
        predictor: Predictor,
        slide: SlideLike | str,
        *,
        slide_mpp: float | None = None,
        chunk: int = DEFAULT_CHUNK,
        tissue_only: bool = False,
        tissue: TissueLike | None = None,
        min_tissue: float = 0.0,
    ) -> None:
        if chunk < 16:
            raise ValueError(f"chunk must be >= 16 px, got {chunk}")
        self.predictor = predictor
        self.slide = open_any(slide)
        self.geom = predictor.geometry(self.slide, slide_mpp)
        self.chunk = int(chunk)
        self.width, self.height = self.geom.grid.width, self.geom.grid.height
        self.grid0 = ChunkGrid(self.width, self.height, self.chunk)
        self.levels = level_shapes(self.width, self.height, self.chunk)
        self.tissue_only = bool(tissue_only)
        self.min_tissue = float(min_tissue)
        self._tissue = tissue

    @property
    def channels(self) -> int:
        return self.predictor.channels

    def chunk_grid(self, level: int) -> ChunkGrid:
        w, h = self.levels[level]
        return ChunkGrid(w, h, self.chunk)

    @property
    def tissue(self) -> TissueLike | None:
        if self.tissue_only and self._tissue is None:
            from protoseg.slide import tissue_mask

            self._tissue = tissue_mask(self.slide)
        return self._tissue

    def has_tissue(self, cy: int, cx: int) -> bool:
        """True when the level-0 chunk must be predicted (always, unless tissue-only)."""
        if not self.tissue_only:
            return True
        x, y, w, h = self.grid0.box(cy, cx)
        s = self.geom.scale
        box0 = (int(x * s), int(y * s), max(1, round(w * s)), max(1, round(h * s)))
        return float(self.tissue.fraction(*box0)) > self.min_tissue

    def tiles_for_chunk(self, cy: int, cx: int) -> list[TileIndex]:
        return self.geom.grid.tiles_for_box(self.grid0.box(cy, cx))

    def background(self, cy: int, cx: int, level: int = 0) -> ChunkData:
        _, _, w, h = self.chunk_grid(level).box(cy, cx)
        return background_chunk(self.channels, h, w)

    def finish(
        self, cy: int, cx: int, tiles: dict[TileIndex, Any], pool: Executor | None = None, parts: int = 1
    ) -> ChunkData:
        """Blend the chunk's tiles and quantise: the level-0 chunk (on the tiles' device when they are tensors).

        With a ``pool``, host tiles are blended in ``parts`` bands of rows on its threads at once: every
        pixel blends the same tiles in the same order, so the bytes are those of one pass."""
        box: Box = self.grid0.box(cy, cx)
        first = next(iter(tiles.values()), None)
        if pool is not None and parts > 1 and isinstance(first, np.ndarray) and box[3] >= 2 * parts:
            return self._finish_in_bands(box, tiles, pool, parts)
        scores = self.predictor.blend_box(self.geom, box, tiles)
        if isinstance(scores, np.ndarray):
            return chunk_from_scores(scores)
        return chunk_from_device_scores(scores)

    def _finish_in_bands(self, box: Box, tiles: dict[TileIndex, Any], pool: Executor, parts: int) -> ChunkData:
        x, y, w, h = box
        probs = np.empty((self.channels, h, w), np.uint8)
        mask = np.empty((h, w), np.uint8)
        edges = [h * i // parts for i in range(parts + 1)]

        def band(y0: int, y1: int) -> None:
            part = chunk_from_scores(self.predictor.blend_box(self.geom, (x, y + y0, w, y1 - y0), tiles))
            probs[:, y0:y1], mask[y0:y1] = part.probs, part.mask

        for f in [pool.submit(band, y0, y1) for y0, y1 in itertools.pairwise(edges)]:
            f.result()
        return ChunkData(probs, mask)

    def describe(self) -> dict[str, Any]:
        """Parameters that determine the output, for metadata and resume checks."""
        return {
            "width": self.width,
            "height": self.height,
            "chunk": self.chunk,
            "scale": self.geom.scale,
            "mpp": self.geom.mpp,
            "slide_mpp": self.geom.slide_mpp,
            "slide_dimensions": list(self.slide.level_dimensions[0]),
            "tissue_only": self.tissue_only,
            "min_tissue": self.min_tissue,
            "levels": [list(s) for s in self.levels],
            "predictor": self.predictor.config(),
        }
