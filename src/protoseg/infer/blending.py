"""Overlap blending of tile predictions with a smooth window, exact where the tiles agree.

Weights are quantised to multiples of 2**-12 and accumulated in float64, so every product
``weight * prob`` (float32 prob) and their sums are exact: where all overlapping tiles predict
the same value the blended value equals it bit for bit (no seams for constant or tiling-invariant
models), and a region gives the same result however it is cut into chunks, because every pixel
sums the same tiles in the same (row-major tile) order.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from enum import Enum
from typing import TYPE_CHECKING

import numpy as np

from protoseg.infer.errors import InferenceError

if TYPE_CHECKING:
    import torch

#: Weight quantum: 12 fractional bits keep weight*float32 products exact in float64.
WEIGHT_QUANTUM = 2.0**-12


class BlendWindow(str, Enum):
    """Per-tile weighting for overlapping predictions."""

    COSINE = "cosine"  # Hann (sin^2) window with a floor so tile borders still count
    UNIFORM = "uniform"  # plain average of overlapping tiles


def make_window(tile_size: int, kind: BlendWindow | str = BlendWindow.COSINE, floor: float = 0.1) -> np.ndarray:
    """(T, T) float64 weights in (0, 1]: outer product of 1-D Hann windows lifted by ``floor``, quantised."""
    kind = BlendWindow(kind)
    if tile_size < 1:
        raise InferenceError(f"tile size must be >= 1, got {tile_size}")
    if not 0.0 < floor <= 1.0:
        raise InferenceError(f"window floor must be in (0, 1], got {floor}")
    if kind is BlendWindow.UNIFORM:
        return np.ones((tile_size, tile_size), dtype=np.float64)
    t = (np.arange(tile_size, dtype=np.float64) + 0.5) / tile_size
    w1 = floor + (1.0 - floor) * np.sin(np.pi * t) ** 2
    w2 = np.outer(w1, w1)
    q = np.round(w2 / WEIGHT_QUANTUM) * WEIGHT_QUANTUM
    return np.maximum(q, WEIGHT_QUANTUM)


def blend_tiles(
    box: tuple[int, int, int, int],
    tiles: Iterable[tuple[int, int, np.ndarray]],
    window: np.ndarray,
    channels: int,
) -> np.ndarray:
    """Blend tiles ``(x0, y0, probs (C, T, T))`` into the box ``(x, y, w, h)``; returns float32 (C, h, w).

    Tiles must be given in a fixed order (row-major tile index) for results that do not depend on
    how a slide is cut into boxes. Every pixel of the box must be covered by at least one tile.
    The box is cut into cells where the same tiles overlap: a cell under one tile is a copy of its
    scores (``w * p / w`` is exactly ``p``), the others are weighted in float64 as described above.
    """
    bx, by, bw, bh = box
    th, tw = window.shape
    items = []
    for x0, y0, probs in tiles:
        if probs.shape != (channels, th, tw):
            raise InferenceError(f"tile prediction has shape {probs.shape}, expected {(channels, th, tw)}")
        ix0, iy0 = max(bx, x0), max(by, y0)
        ix1, iy1 = min(bx + bw, x0 + tw), min(by + bh, y0 + th)
        if ix0 < ix1 and iy0 < iy1:
            items.append((ix0, iy0, ix1, iy1, x0, y0, probs))
    xs = sorted({bx, bx + bw, *(v for it in items for v in (it[0], it[2]))})
    ys = sorted({by, by + bh, *(v for it in items for v in (it[1], it[3]))})
    out = np.empty((channels, bh, bw), dtype=np.float32)
    scratch = np.empty((channels, th, tw), dtype=np.float64)  # one product buffer for every tile
    for cy0, cy1 in itertools.pairwise(ys):
        rows = [it for it in items if it[1] <= cy0 and cy1 <= it[3]]
        for cx0, cx1 in itertools.pairwise(xs):
            cover = [it for it in rows if it[0] <= cx0 and cx1 <= it[2]]
            osl = (slice(None), slice(cy0 - by, cy1 - by), slice(cx0 - bx, cx1 - bx))
            if not cover:
                raise InferenceError(f"box {box} is not fully covered by the given tiles (internal tiling error)")
            if len(cover) == 1:
                x0, y0, probs = cover[0][4:]
                out[osl] = probs[:, cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0]
                continue
            acc = np.zeros((channels, cy1 - cy0, cx1 - cx0), dtype=np.float64)
            wsum = np.zeros((cy1 - cy0, cx1 - cx0), dtype=np.float64)
            part = scratch[:, : cy1 - cy0, : cx1 - cx0]
            for *_, x0, y0, probs in cover:
                tsl = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
                w = window[tsl]
                np.multiply(probs[(slice(None), *tsl)], w, out=part, dtype=np.float64)  # = float64(probs) * w
                np.add(acc, part, out=acc)
                wsum += w
            acc /= wsum
            out[osl] = acc
    return out


def blend_tiles_torch(
    box: tuple[int, int, int, int],
    tiles: Iterable[tuple[int, int, torch.Tensor]],
    window: torch.Tensor,
    channels: int,
) -> torch.Tensor:
    """``blend_tiles`` on the tiles' device (float64 accumulation, same order): the same values bit for bit."""
    import torch

    bx, by, bw, bh = box
    acc = torch.zeros((channels, bh, bw), dtype=torch.float64, device=window.device)
    wsum = torch.zeros((bh, bw), dtype=torch.float64, device=window.device)
    th, tw = window.shape
    for x0, y0, probs in tiles:
        if tuple(probs.shape) != (channels, th, tw):
            raise InferenceError(f"tile prediction has shape {tuple(probs.shape)}, expected {(channels, th, tw)}")
        ix0, iy0 = max(bx, x0), max(by, y0)
        ix1, iy1 = min(bx + bw, x0 + tw), min(by + bh, y0 + th)
        if ix0 >= ix1 or iy0 >= iy1:
            continue
        w = window[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0]
        acc[:, iy0 - by : iy1 - by, ix0 - bx : ix1 - bx] += (
            probs[:, iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0].double() * w
        )
        wsum[iy0 - by : iy1 - by, ix0 - bx : ix1 - bx] += w
    if not bool((wsum > 0).all()):
        raise InferenceError(f"box {box} is not fully covered by the given tiles (internal tiling error)")
    return (acc / wsum).float()
