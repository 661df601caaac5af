"""Coarser pyramid levels built while level 0 is still being written, instead of after the run.

Each predicted chunk's 2x reduction goes into its parent's buffer; once all of a parent's children are in,
the parent is written and reduced into its own parent in turn. Children that are background everywhere
(known before the run: no tissue) need no data: a constant chunk reduces to the same constant. The bytes
equal those of building the level afterwards from the stored finer level (``chunk_from_finer``): with an
even chunk side a 2x2 block never straddles two children. What it does not build (runs that resume
earlier chunks, parents beyond the ``max_open_bytes`` bound and their ancestors, odd chunk sides) is left to
``build_missing``, which reads the finer level back as before.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Sequence

import numpy as np

from protoseg.infer.grid import ChunkGrid
from protoseg.infer.pyramid import ChunkData, background_chunk, channel_argmax, chunk_from_finer, downsample2

logger = logging.getLogger(__name__)

#: writes one chunk: (level, cy, cx, data)
WriteChunk = Callable[[int, int, int, ChunkData], None]
#: reads a box (C, h, w) of a level's stored uint8 scores: (level, y0, y1, x0, x1)
ReadScores = Callable[[int, int, int, int, int], np.ndarray]
#: default bound on the buffers of parents waiting for children (bytes)
MAX_OPEN_BYTES = 256 << 20

Key = tuple[int, int, int]  # (level, cy, cx)


class _Parent:
    """A coarse chunk being assembled from its children's reductions."""

    def __init__(self, probs: np.ndarray, waiting: set[tuple[int, int]]) -> None:
        self.probs = probs
        self.waiting = waiting  # children (cy, cx) of the finer level still to come


class StreamingPyramid:
    """Levels 1.. of a chunk pyramid, fed the level-0 chunks predicted in this run in any order from any
    thread (``add``); ``background`` names the level-0 chunks that are background everywhere."""

    def __init__(
        self,
        grids: Sequence[ChunkGrid],
        channels: int,
        write: WriteChunk,
        background: Collection[tuple[int, int]] = (),
        enabled: bool = True,
        max_open_bytes: int = MAX_OPEN_BYTES,
    ) -> None:
        self.grids = list(grids)
        self.channels = int(channels)
        self.write = write
        self.max_open_bytes = int(max_open_bytes)
        self.enabled = enabled and len(self.grids) > 1 and all(g.chunk % 2 == 0 for g in self.grids)
        self._background = self._background_sets(set(background))
        self._open: dict[Key, _Parent] = {}
        self._open_bytes = 0
        self._dropped: set[Key] = set()
        self._built: list[set[tuple[int, int]]] = [set() for _ in self.grids]
        self._lock = threading.Lock()

    def _background_sets(self, level0: set[tuple[int, int]]) -> list[set[tuple[int, int]]]:
        """Per level, the chunks whose every level-0 chunk underneath is background."""
        sets = [level0]
        for level in range(1, len(self.grids)):
            finer, rows, cols = sets[-1], *self.grids[level - 1].shape
            sets.append(
                {
                    (cy, cx)
                    for cy, cx in self.grids[level]
                    if all(
                        (y, x) in finer
                        for y in range(2 * cy, min(rows, 2 * cy + 2))
                        for x in range(2 * cx, min(cols, 2 * cx + 2))
                    )
                }
            )
        return sets

    def add(self, level: int, cy: int, cx: int, probs: np.ndarray) -> None:
        """Chunk (cy, cx) of ``level`` is final with uint8 scores ``probs``: reduce it into its parent."""
        if not self.enabled or level + 1 >= len(self.grids):
            return
        key = (level + 1, cy // 2, cx // 2)
        part = downsample2(probs)
        with self._lock:
            parent = self._open.get(key)
            if parent is None:
                if key in self._dropped or key[1:] in self._built[key[0]]:
                    return
                parent = self._new_parent(key)
                if parent is None:
                    return
            if (cy, cx) not in parent.waiting:
                logger.warning("pyramid: chunk %s of level %d given twice; kept the first", (cy, cx), level)
                return
            self._place(parent, cy, cx, part)
            if parent.waiting:
                return
            del self._open[key]
            self._open_bytes -= parent.probs.nbytes
            self._built[key[0]].add(key[1:])
        self.write(*key, ChunkData(parent.probs, channel_argmax(parent.probs)))
        self.add(*key, parent.probs)

    def _place(self, parent: _Parent, cy: int, cx: int, part: np.ndarray) -> None:
        half = self.grids[0].chunk // 2
        y0, x0 = (cy % 2) * half, (cx % 2) * half
        parent.probs[:, y0 : y0 + part.shape[1], x0 : x0 + part.shape[2]] = part
        parent.waiting.discard((cy, cx))

    def _new_parent(self, key: Key) -> _Parent | None:
        """Open parent ``key`` with its background children filled in (None when the bound is reached: then
        it and its ancestors are left to ``build_missing``). Call with the lock held."""
        level, py, px = key
        _, _, w, h = self.grids[level].box(py, px)
        nbytes = self.channels * h * w
        if self._open_bytes + nbytes > self.max_open_bytes:
            self._drop(key)
            return None
        rows, cols = self.grids[level - 1].shape
        children = {(y, x) for y in range(2 * py, min(rows, 2 * py + 2)) for x in range(2 * px, min(cols, 2 * px + 2))}
        parent = _Parent(np.zeros((self.channels, h, w), np.uint8), set(children))
        for cy, cx in children & self._background[level - 1]:
            _, _, cw, ch = self.grids[level - 1].box(cy, cx)
            self._place(parent, cy, cx, downsample2(background_chunk(self.channels, ch, cw).probs))
        self._open[key] = parent
        self._open_bytes += nbytes
        return parent

    def _drop(self, key: Key) -> None:
        """``key`` and every coarser chunk above it wait for ``build_missing``; their open buffers are freed."""
        level, cy, cx = key
        while level < len(self.grids):
            k = (level, cy, cx)
            self._dropped.add(k)
            parent = self._open.pop(k, None)
            if parent is not None:
                self._open_bytes -= parent.probs.nbytes
            level, cy, cx = level + 1, cy // 2, cx // 2

    def build_missing(self, read: ReadScores) -> int:
        """Write every coarse chunk not built yet, coarse level after level: background-only chunks as the
        constant they are, the others from the stored finer level; returns how many were read back. Call once
        all level-0 chunks are stored."""
        count = 0
        for level in range(1, len(self.grids)):
            c = self.grids[level].chunk
            for cy, cx in self.grids[level]:
                if (cy, cx) in self._built[level]:
                    continue
                if (cy, cx) in self._background[level]:
                    _, _, w, h = self.grids[level].box(cy, cx)
                    self.write(level, cy, cx, background_chunk(self.channels, h, w))
                else:
                    finer = read(level - 1, 2 * cy * c, 2 * (cy + 1) * c, 2 * cx * c, 2 * (cx + 1) * c)
                    self.write(level, cy, cx, chunk_from_finer(np.asarray(finer)))
                    count += 1
                self._built[level].add((cy, cx))
        return count
