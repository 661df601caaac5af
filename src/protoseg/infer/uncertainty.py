"""Where to look next: per-pixel uncertainty of class scores and the most uncertain unreviewed block."""

from __future__ import annotations

import numpy as np


def margin_uncertainty(probs: np.ndarray) -> np.ndarray:
    """uint8 (C+1, h, w) scores -> uint8 (h, w) top-2 margin uncertainty: 255 - (best - second best), so
    255 = the two best classes tied, 0 = one class has all the score."""
    p = np.asarray(probs)
    if p.ndim != 3:
        raise ValueError(f"margin_uncertainty expects (C+1, h, w) scores, got shape {p.shape}")
    if p.shape[0] < 2:
        return np.zeros(p.shape[1:], np.uint8)
    if p.dtype != np.uint8:
        p = np.clip(np.rint(p.astype(np.float32) * 255.0 if p.max(initial=0) <= 1.0 else p), 0, 255).astype(np.uint8)
    top2 = np.partition(p, p.shape[0] - 2, axis=0)[-2:]
    margin = top2[1].astype(np.int16) - top2[0].astype(np.int16)
    return (255 - margin).astype(np.uint8)


def next_review_block(uncertainty_blocks: np.ndarray, reviewed: np.ndarray) -> tuple[int, int] | None:
    """(row, col) of the most uncertain block not yet reviewed (first in row-major order on ties); None when
    every block with a known (finite) uncertainty is reviewed."""
    u = np.asarray(uncertainty_blocks, dtype=np.float64)
    done = np.asarray(reviewed).astype(bool)
    if u.shape != done.shape:
        raise ValueError(f"uncertainty blocks {u.shape} and reviewed {done.shape} differ in shape")
    candidates = np.where(np.isfinite(u) & ~done, u, -np.inf)
    if candidates.size == 0 or not np.isfinite(candidates).any():
        return None
    row, col = np.unravel_index(int(np.argmax(candidates)), candidates.shape)
    return int(row), int(col)


def review_scores(sums: np.ndarray, counts: np.ndarray, block: int) -> np.ndarray:
    """Review score per block from summed uncertainty and computed-pixel counts: the mean over the block's
    whole ``block``² area (pixels outside the grid or not computed count as certain), so a sliver at the
    slide's edge or a block barely computed never outranks a whole uncertain one; NaN where nothing is computed."""
    sums, counts = np.asarray(sums, np.float64), np.asarray(counts)
    return np.where(counts > 0, sums / float(block * block), np.nan)


def block_uncertainty(uncertainty: np.ndarray, block: int) -> np.ndarray:
    """:func:`review_scores` of a fully computed (h, w) uncertainty map on ``block``-px blocks."""
    u = np.asarray(uncertainty, np.float64)
    rows, cols = -(-u.shape[0] // block), -(-u.shape[1] // block)
    padded = np.zeros((rows * block, cols * block))
    padded[: u.shape[0], : u.shape[1]] = u
    sums = padded.reshape(rows, block, cols, block).sum(axis=(1, 3))
    return review_scores(sums, np.ones_like(sums), block)
