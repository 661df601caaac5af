"""Spherical (cosine) K-means with k-means++ seeding, used to split each class into sub-clusters."""

from __future__ import annotations

import logging

import numpy as np

from protoseg.bank.errors import BankError

logger = logging.getLogger(__name__)


def l2_normalize(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    n = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(n, 1e-12)


def _plus_plus_init(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding with cosine distance: each new centre drawn with probability ~ distance^2."""
    n = x.shape[0]
    idx = [int(rng.integers(n))]
    dist = 1.0 - x @ x[idx[0]]
    for _ in range(1, k):
        w = np.clip(dist, 0.0, None) ** 2
        w[idx] = 0.0
        if w.sum() <= 0:  # all remaining points coincide with a centre: pick any unused one
            free = np.setdiff1d(np.arange(n), idx)
            nxt = int(rng.choice(free))
        else:
            nxt = int(rng.choice(n, p=w / w.sum()))
        idx.append(nxt)
        dist = np.minimum(dist, 1.0 - x @ x[nxt])
    return x[idx].copy()


def _lloyd(x: np.ndarray, centers: np.ndarray, n_iter: int) -> tuple[np.ndarray, np.ndarray, float]:
    """Alternate assignment / mean-direction updates; empty clusters take the worst-served point."""
    k = centers.shape[0]
    assign = np.full(x.shape[0], -1)
    for _ in range(max(1, n_iter)):
        sim = x @ centers.T
        new = sim.argmax(axis=1)
        best = sim[np.arange(len(x)), new]
        for c in range(k):
            if not np.any(new == c):  # empty: steal the point farthest from its centre
                counts = np.bincount(new, minlength=k)
                cand = np.where(counts[new] > 1)[0]
                far = cand[np.argmin(best[cand])]
                new[far], best[far] = c, 1.0
        if np.array_equal(new, assign):
            break
        assign = new
        for c in range(k):
            centers[c] = x[assign == c].sum(axis=0)
        centers = l2_normalize(centers)
    inertia = float(np.sum(1.0 - np.sum(x * centers[assign], axis=1)))
    return centers, assign, inertia


def cosine_kmeans(
    features: np.ndarray, k: int, n_iter: int = 50, seed: int = 0, n_init: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Cluster (N, d) features by cosine similarity into k groups; deterministic for a given seed.

    Returns (centers (k, d) float32 unit vectors, assignment (N,) int64). Rows are L2-normalised first.
    Runs ``n_init`` seedings and keeps the lowest total cosine distance. Needs 1 <= k <= N.
    """
    if hasattr(features, "detach"):  # torch tensor, possibly on a GPU
        features = features.detach().cpu().numpy()
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0:
        raise BankError(f"cosine_kmeans expects a non-empty (N, d) array, got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise BankError(f"cosine_kmeans needs 1 <= k <= N, got k={k} for N={x.shape[0]}; lower k")
    if not np.isfinite(x).all():
        raise BankError("cosine_kmeans got NaN or infinite features; check the encoder output")
    x = l2_normalize(x)
    rng = np.random.default_rng(seed)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(max(1, n_init)):
        run = _lloyd(x, _plus_plus_init(x, k, rng), n_iter)
        if best is None or run[2] < best[2] - 1e-12:
            best = run
    assert best is not None
    return best[0].astype(np.float32), best[1].astype(np.int64)
