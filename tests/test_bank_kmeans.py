"""cosine_kmeans: planted clusters, determinism, empty-cluster handling, argument errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from protoseg.bank import BankError, cosine_kmeans


def _planted(
    seed: int = 0, per: int = 30, d: int = 16, noise: float = 0.15
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, 3)))
    dirs = q.T  # 3 orthonormal directions
    labels = np.repeat(np.arange(3), per)
    x = dirs[labels] + noise * rng.normal(size=(3 * per, d))
    x *= rng.uniform(0.5, 3.0, size=(len(x), 1))  # scale must not matter for cosine clustering
    perm = rng.permutation(len(x))
    return x[perm], labels[perm], dirs


def test_recovers_planted_clusters_up_to_permutation() -> None:
    x, labels, dirs = _planted()
    centers, assign = cosine_kmeans(x, 3, n_iter=50, seed=1)
    assert centers.shape == (3, 16) and assign.shape == (90,)
    np.testing.assert_allclose(np.linalg.norm(centers, axis=1), 1.0, atol=1e-5)
    mapping = {t: set(assign[labels == t]) for t in range(3)}
    assert all(len(v) == 1 for v in mapping.values()), mapping
    perm = [mapping[t].pop() for t in range(3)]
    assert sorted(perm) == [0, 1, 2]
    for t in range(3):  # each centre is the normalised mean direction of its members
        members = x[labels == t] / np.linalg.norm(x[labels == t], axis=1, keepdims=True)
        ref = members.mean(axis=0)
        ref /= np.linalg.norm(ref)
        np.testing.assert_allclose(centers[perm[t]], ref, atol=1e-5)
        assert float(centers[perm[t]] @ dirs[t]) > 0.97


def test_deterministic_by_seed_and_accepts_tensors() -> None:
    x, _, _ = _planted(seed=3, noise=0.6)
    a = cosine_kmeans(x, 4, seed=7)
    b = cosine_kmeans(torch.from_numpy(x), 4, seed=7)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)


def test_assignment_is_nearest_centre() -> None:
    x, _, _ = _planted(seed=5, noise=0.8)
    centers, assign = cosine_kmeans(x, 3, seed=0)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_array_equal(assign, np.argmax(xn @ centers.T, axis=1))


def test_no_empty_cluster_with_duplicate_points() -> None:
    x = np.array([[1.0, 0.0]] * 5 + [[0.0, 1.0]])
    for seed in range(5):
        _centers, assign = cosine_kmeans(x, 3, seed=seed)
        assert np.bincount(assign, minlength=3).min() >= 1
        assert len(np.unique(assign)) == 3


def test_k_equal_n_gives_singletons() -> None:
    x = np.eye(4)
    centers, assign = cosine_kmeans(x, 4, seed=0)
    assert sorted(assign.tolist()) == [0, 1, 2, 3]
    for i, j in itertools.product(range(4), repeat=2):
        if assign[i] == j:
            np.testing.assert_allclose(centers[j], x[i], atol=1e-6)


@pytest.mark.parametrize("k", [0, 5])
def test_bad_k_raises(k: int) -> None:
    with pytest.raises(BankError, match="1 <= k <= N"):
        cosine_kmeans(np.eye(4), k)


def test_nan_features_raise() -> None:
    x = np.eye(3)
    x[0, 0] = np.nan
    with pytest.raises(BankError, match="NaN"):
        cosine_kmeans(x, 2)
