"""Random tissue layouts: smooth region maps with 1-3 classes per patch and glass background."""

from __future__ import annotations

import numpy as np

from protoseg.data.synthetic.noise import smooth_noise


def random_layout(
    size: int | tuple[int, int],
    rng: np.random.Generator,
    n_classes_range: tuple[int, int] = (1, 3),
    background_prob: float = 0.3,
    num_classes: int = 4,
    scale: float | None = None,
    min_fraction: float = 0.04,
) -> np.ndarray:
    """int64 (H, W) label map: classes 0..num_classes-1, background ``num_classes``.

    ``n_classes_range`` (inclusive) bounds the number of tissue classes present; each present class
    covers at least ``min_fraction`` of the tissue. With probability ``background_prob`` some glass
    (10-40 % of the area) is added. ``scale`` is the typical region size in pixels.
    """
    h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    lo, hi = n_classes_range
    if not 1 <= lo <= hi <= num_classes:
        raise ValueError(f"n_classes_range must satisfy 1 <= lo <= hi <= {num_classes}, got {n_classes_range}")
    scale = float(scale or max(h, w) / 2.5)
    k = int(rng.integers(lo, hi + 1))
    chosen = rng.choice(num_classes, size=k, replace=False)
    fields = np.stack(
        [
            smooth_noise((h, w), scale * rng.uniform(0.7, 1.3), rng) + 0.25 * smooth_noise((h, w), scale / 6, rng)
            for _ in range(k)
        ]
    )
    active = np.ones(k, dtype=bool)
    while True:
        idx = np.argmax(np.where(active[:, None, None], fields, -np.inf), axis=0)
        frac = np.bincount(idx.ravel(), minlength=k) / idx.size
        small = active & (frac < min_fraction)
        if not small.any() or active.sum() <= 1:
            break
        active[np.argmin(np.where(small, frac, np.inf))] = False
    label = chosen[idx].astype(np.int64)
    if rng.random() < background_prob:
        glass = smooth_noise((h, w), scale * rng.uniform(0.8, 1.5), rng) + 0.2 * smooth_noise((h, w), scale / 8, rng)
        label[glass > np.quantile(glass, 1.0 - rng.uniform(0.1, 0.4))] = num_classes
    return label
