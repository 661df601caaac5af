"""Prediction pyramid arithmetic shared by the lazy and batch paths (so both give identical bytes).

Stored probabilities are uint8 = round(255 * score) (4x smaller than float32, what napari shows
directly; 1/255 resolution is plenty for CAM heatmaps). Level 0 masks are the argmax of the float
scores; coarser levels are 2x block means of the finer uint8 scores (edge blocks average the
pixels that exist) and their masks are the argmax of those means, so coarse and fine agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkData:
    """One computed chunk: uint8 scores (C+1, h, w) and uint8 class mask (h, w)."""

    probs: np.ndarray
    mask: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.probs.nbytes + self.mask.nbytes)


def level_shapes(width: int, height: int, chunk: int) -> list[tuple[int, int]]:
    """(w, h) per level: level 0 then 2x reductions (ceil) until the level fits in one chunk."""
    shapes = [(width, height)]
    while max(shapes[-1]) > chunk:
        w, h = shapes[-1]
        shapes.append((-(-w // 2), -(-h // 2)))
    return shapes


def quantize(probs: np.ndarray) -> np.ndarray:
    """float scores in [0, 1] -> uint8 0..255 (rounded to nearest)."""
    scaled = np.multiply(probs, np.float32(255.0))  # one temporary, rounded and clipped in place
    np.rint(scaled, out=scaled)
    np.clip(scaled, 0, 255, out=scaled)
    return scaled.astype(np.uint8)


def channel_argmax(probs: np.ndarray) -> np.ndarray:
    """uint8 (h, w) index of the largest of (C, h, w) scores, the first one on ties (``np.argmax(axis=0)``),
    by whole-plane comparisons (faster than numpy's strided reduction over the channel axis)."""
    best = probs[0].copy()
    index = np.zeros(best.shape, np.uint8)
    for c in range(1, probs.shape[0]):
        higher = probs[c] > best
        np.copyto(index, np.uint8(c), where=higher)
        np.maximum(best, probs[c], out=best)
    return index


def chunk_from_scores(probs: np.ndarray) -> ChunkData:
    """Level-0 chunk from float (C+1, h, w) scores: mask from the float argmax, scores quantised."""
    return ChunkData(quantize(probs), channel_argmax(probs))


def background_chunk(channels: int, height: int, width: int) -> ChunkData:
    """A chunk with no tissue: background score 255, class scores 0, mask = background index."""
    probs = np.zeros((channels, height, width), np.uint8)
    probs[channels - 1] = 255
    return ChunkData(probs, np.full((height, width), channels - 1, np.uint8))


def downsample2(probs: np.ndarray) -> np.ndarray:
    """uint8 (C, h, w) -> uint8 (C, ceil(h/2), ceil(w/2)) by rounded means of the existing 2x2 pixels."""
    c, h, w = probs.shape
    if h % 2 == 0 and w % 2 == 0:  # every chunk but a slide's last row/column: four strided uint16 adds
        s = probs[:, 0::2, 0::2].astype(np.uint16)
        s += probs[:, 1::2, 0::2]
        s += probs[:, 0::2, 1::2]
        s += probs[:, 1::2, 1::2]
        s += 2
        s //= 4  # = (2 s + n) // (2 n) with n = 4
        return s.astype(np.uint8)
    hp, wp = h + h % 2, w + w % 2
    padded = np.zeros((c, hp, wp), np.uint32)
    padded[:, :h, :w] = probs
    count = np.zeros((hp, wp), np.uint32)
    count[:h, :w] = 1
    s = padded.reshape(c, hp // 2, 2, wp // 2, 2).sum(axis=(2, 4))
    n = count.reshape(hp // 2, 2, wp // 2, 2).sum(axis=(1, 3))
    return ((2 * s + n) // (2 * n)).astype(np.uint8)


def chunk_from_finer(finer_probs: np.ndarray) -> ChunkData:
    """Coarse chunk from the (C+1, <=2h, <=2w) finer-level scores under it."""
    probs = downsample2(finer_probs)
    return ChunkData(probs, channel_argmax(probs))
