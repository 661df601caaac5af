"""Per-channel mean/std of a patch dataset, cached in ``.protoseg-stats.json`` beside the data."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np

logger = logging.getLogger(__name__)

STATS_FILE = ".protoseg-stats.json"


def _fingerprint(dataset, indices: np.ndarray) -> str:
    """Key identifying the dataset content sampled (split, size, sampled names)."""
    names = [str(dataset[i]["name"]) if not hasattr(dataset, "records") else dataset.records[i].name for i in indices]
    h = hashlib.sha1()
    h.update(f"{getattr(getattr(dataset, 'split', None), 'value', '')}|{len(dataset)}|".encode())
    h.update("|".join(names).encode())
    return h.hexdigest()[:16]


def compute_normalization(
    dataset, max_samples: int = 1000, cache: bool = True
) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Mean and std per RGB channel over up to ``max_samples`` evenly spaced samples (images in [0, 1])."""
    n = len(dataset)
    if n == 0:
        raise ValueError("cannot compute normalisation statistics of an empty dataset")
    indices = np.unique(np.linspace(0, n - 1, min(n, max_samples)).round().astype(int))
    root = getattr(dataset, "root", None)
    cache_path = Path(root) / STATS_FILE if (cache and root is not None) else None
    key = _fingerprint(dataset, indices)
    if cache_path is not None and cache_path.is_file():
        try:
            entry = json.loads(cache_path.read_text()).get(key)
            if entry:
                logger.info("normalisation statistics read from %s", cache_path)
                return tuple(entry["mean"]), tuple(entry["std"])
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable stats cache %s: %s", cache_path, exc)
    total = np.zeros(3)
    total_sq = np.zeros(3)
    count = 0
    saved = getattr(dataset, "transform", None)
    if saved is not None:
        dataset.transform = None  # statistics of the raw images, not of augmented ones
    try:
        for i in indices:
            img = dataset[int(i)]["image"]
            arr = (img.numpy() if hasattr(img, "numpy") else np.asarray(img)).astype(np.float64).reshape(3, -1)
            total += arr.sum(axis=1)
            total_sq += (arr * arr).sum(axis=1)
            count += arr.shape[1]
    finally:
        if saved is not None:
            dataset.transform = saved
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean * mean, 0.0))
    result = (tuple(float(v) for v in mean), tuple(float(v) for v in std))
    if cache_path is not None:
        try:
            data = json.loads(cache_path.read_text()) if cache_path.is_file() else {}
            data[key] = {"mean": result[0], "std": result[1], "n_samples": int(len(indices))}
            cache_path.write_text(json.dumps(data, indent=1))
        except (OSError, ValueError) as exc:
            logger.info("could not write stats cache %s (%s); continuing without it", cache_path, exc)
    return result
