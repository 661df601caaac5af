"""Coarser pyramid levels built while level 0 is still being written, instead of after the run.

Each finished chunk's 2x reduction goes into its parent's buffer; once all of a parent's children are in,
the parent is written and reduced into its own parent in turn. The bytes equal those of building the level
afterwards from the stored finer level (``chunk_from_finer``): with an even chunk side a 2x2 block never
straddles two children. What it cannot build (children written by an earlier, resumed run; more open parents
than ``max_open``) is left to ``build_missing``, which reads the finer level back as before.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

import numpy as np

from protoseg.infer.grid import ChunkGrid
from protoseg.infer.pyramid import ChunkData, channel_argmax, chunk_from_finer, downsample2

#: writes one chunk: (level, cy, cx, data)
WriteChunk = Callable[[int, int, int, ChunkData], None]
#: reads a box (C, h, w) of a level's stored uint8 scores: (level, y0, y1, x0, x1)
ReadScores = Callable[[int, int, int, int, int], np.ndarray]


class _Parent:
    """A coarse chunk being assembled from its children's reductions."""

    def __init__(self, channels: int, height: int, width: int, children: int) -> None:
        self.probs = np.zeros((channels, height, width), np.uint8)
        self.missing = children


class StreamingPyramid:
    """Levels 1.. of a chunk pyramid, fed level-0 chunks in any order from any thread (``add``)."""

    def __init__(self, grids: Sequence[ChunkGrid], channels: int, write: WriteChunk, max_open: int = 64) -> None:
        self.grids = list(grids)
        self.channels = int(channels)
        self.write = write
        self.max_open = int(max_open)
        self.enabled = len(self.grids) > 1 and all(g.chunk % 2 == 0 for g in self.grids)
        self._open: dict[tuple[int, int, int], _Parent] = {}
        self._dropped: set[tuple[int, int, int]] = set()
        self._built: list[set[tuple[int, int]]] = [set() for _ in self.grids]
        self._lock = threading.Lock()

    def add(self, level: int, cy: int, cx: int, probs: np.ndarray) -> None:
        """Chunk (cy, cx) of ``level`` is final with uint8 scores ``probs``: reduce it into its parent."""
        if not self.enabled or level + 1 >= len(self.grids):
            return
        half = self.grids[level].chunk // 2
        part = downsample2(probs)
        key = (level + 1, cy // 2, cx // 2)
        with self._lock:
            if key in self._dropped:
                return
            parent = self._open.get(key)
            if parent is None:
                if len(self._open) >= self.max_open:
                    self._dropped.add(key)  # memory bound: build_missing makes it from the stored level
                    return
                parent = self._new_parent(*key)
                self._open[key] = parent
            y0, x0 = (cy % 2) * half, (cx % 2) * half
            parent.probs[:, y0 : y0 + part.shape[1], x0 : x0 + part.shape[2]] = part
            parent.missing -= 1
            if parent.missing:
                return
            del self._open[key]
            self._built[key[0]].add(key[1:])
        self.write(key[0], key[1], key[2], ChunkData(parent.probs, channel_argmax(parent.probs)))
        self.add(*key, parent.probs)

    def _new_parent(self, level: int, py: int, px: int) -> _Parent:
        _, _, w, h = self.grids[level].box(py, px)
        rows, cols = self.grids[level - 1].shape
        children = (min(rows, 2 * py + 2) - 2 * py) * (min(cols, 2 * px + 2) - 2 * px)
        return _Parent(self.channels, h, w, children)

    def build_missing(self, read: ReadScores) -> int:
        """Write every coarse chunk not built yet from the stored finer level, coarse level after level;
        returns how many. Call once all level-0 chunks are stored."""
        count = 0
        for level in range(1, len(self.grids)):
            c = self.grids[level].chunk
            for cy, cx in self.grids[level]:
                if (cy, cx) in self._built[level]:
                    continue
                finer = read(level - 1, 2 * cy * c, 2 * (cy + 1) * c, 2 * cx * c, 2 * (cx + 1) * c)
                self.write(level, cy, cx, chunk_from_finer(np.asarray(finer)))
                self._built[level].add((cy, cx))
                count += 1
        return count
