"""Build an image bank: single-class, non-white patches -> embed -> cosine K-means per class -> N_K nearest."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from protoseg.bank.core import THUMBNAIL_SIZE, BankMember, BankSample, Box, ImageBank
from protoseg.bank.errors import BankError
from protoseg.bank.kmeans import cosine_kmeans
from protoseg.classes import ClassSpec
from protoseg.models.encoders.base import ImageEncoder
from protoseg.slide.pixels import as_rgb_uint8

logger = logging.getLogger(__name__)

_Kept = tuple[int, str, Box | None, float | None]  # class, source, box, mpp
WHITE_LEVEL = 220  # a pixel is "white" when all three channels exceed this value
WHITE_THRESHOLD = 0.7  # patches with a larger white fraction are dropped


def white_fraction(image: np.ndarray, level: int = WHITE_LEVEL) -> float:
    """Fraction of pixels whose three channels are all above ``level`` (blank glass / background)."""
    return float((as_rgb_uint8(image) > level).all(axis=2).mean())


def make_thumbnail(image: np.ndarray, size: int = THUMBNAIL_SIZE) -> np.ndarray:
    """(size, size, 3) uint8 thumbnail (area-averaged resize of the whole patch)."""
    x = torch.from_numpy(as_rgb_uint8(image)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def embed_images(encoder: ImageEncoder, images: Sequence[np.ndarray], batch_size: int = 32) -> np.ndarray:
    """(N, d) float32 unit embeddings of uint8 RGB images of any sizes, computed in batches without grad."""
    out: list[np.ndarray] = []
    size = int(encoder.input_size)
    for i in range(0, len(images), max(1, batch_size)):
        batch = []
        for img in images[i : i + batch_size]:
            x = torch.from_numpy(as_rgb_uint8(img)).permute(2, 0, 1)[None].float() / 255
            if x.shape[-2:] != (size, size):
                x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
            batch.append(x.clamp(0, 1))
        with torch.no_grad():
            out.append(encoder.encode(torch.cat(batch)).float().cpu().numpy())
    if not out:
        return np.zeros((0, int(encoder.dim)), dtype=np.float32)
    return np.concatenate(out).astype(np.float32)


def _single_class(label: Sequence[int], num_classes: int, source: str) -> int | None:
    """Index of the only present class, or None when the label has zero or several classes."""
    lab = np.asarray(label)
    if lab.shape != (num_classes,):
        raise BankError(
            f"sample {source!r}: label {tuple(label)} has {lab.size} entries, the class spec has {num_classes}"
        )
    present = np.flatnonzero(lab > 0)
    return int(present[0]) if present.size == 1 else None


def _select_and_embed(
    samples: Iterable[BankSample],
    class_spec: ClassSpec,
    encoder: ImageEncoder,
    white_threshold: float,
    white_level: int,
    batch_size: int,
    thumbnail_size: int,
    progress: Callable[[int], None] | None,
) -> tuple[list[_Kept], np.ndarray, np.ndarray]:
    """Stream samples, keep single-class non-white ones; only thumbnails and features stay in memory."""
    kept: list[_Kept] = []
    feats: list[np.ndarray] = []
    thumbs: list[np.ndarray] = []
    pending: list[np.ndarray] = []
    seen = multi = white = 0

    def flush() -> None:
        if pending:
            feats.append(embed_images(encoder, pending, batch_size))
            pending.clear()
        if progress is not None:
            progress(seen)

    for s in samples:
        seen += 1
        cls = _single_class(s.label, class_spec.num_classes, s.source)
        if cls is None:
            multi += 1
            continue
        if white_fraction(s.image, white_level) > white_threshold:
            white += 1
            continue
        box = None if s.box is None else tuple(int(v) for v in s.box)
        kept.append((cls, str(s.source), box, None if s.mpp is None else float(s.mpp)))  # type: ignore[arg-type]
        thumbs.append(make_thumbnail(s.image, thumbnail_size))
        pending.append(s.image)
        if len(pending) >= batch_size:
            flush()
    flush()
    logger.info("bank: %d samples seen, %d not single-class, %d mostly white, %d kept", seen, multi, white, len(kept))
    f = np.concatenate(feats) if feats else np.zeros((0, int(encoder.dim)), np.float32)
    t = np.stack(thumbs) if thumbs else np.zeros((0, thumbnail_size, thumbnail_size, 3), np.uint8)
    return kept, f, t


def build_bank(
    samples: Iterable[BankSample],
    class_spec: ClassSpec,
    encoder: ImageEncoder,
    k: int = 3,
    n_per_cluster: int = 100,
    white_threshold: float = WHITE_THRESHOLD,
    white_level: int = WHITE_LEVEL,
    batch_size: int = 32,
    n_iter: int = 50,
    seed: int = 0,
    thumbnail_size: int = THUMBNAIL_SIZE,
    progress: Callable[[int], None] | None = None,
    data_scale: float | None = None,
) -> ImageBank:
    """PBIP image bank: per class, cosine K-means into ``k`` sub-clusters, keep ``n_per_cluster`` nearest each.

    Only samples whose label has exactly one class are used; patches whose white fraction exceeds
    ``white_threshold`` are dropped. A class with fewer than ``k`` samples gets fewer sub-clusters
    (warning); a class with none is left empty (warning) and must get members before training.
    ``progress(n_seen)`` is called after each embedded batch (e.g. to drive a progress bar).
    ``data_scale``: the resampling of folder patches, recorded so training at another one can say so.
    """
    if k < 1 or n_per_cluster < 1:
        raise BankError(f"k and n_per_cluster must be >= 1, got k={k}, n_per_cluster={n_per_cluster}")
    kept, feats, thumbs = _select_and_embed(
        samples, class_spec, encoder, white_threshold, white_level, batch_size, thumbnail_size, progress
    )
    classes = np.array([row[0] for row in kept], dtype=np.int64)
    rows: list[tuple[int, int, float, int]] = []  # (class, cluster, distance, sample row)
    for c, name in enumerate(class_spec.names):
        idx = np.flatnonzero(classes == c)
        if idx.size == 0:
            logger.warning("bank: class %s has no single-class, non-white samples; it has no members", name)
            continue
        k_c = min(k, idx.size)
        if k_c < k:
            logger.warning(
                "bank: class %s has only %d samples; using %d sub-clusters instead of %d", name, idx.size, k_c, k
            )
        centers, assign = cosine_kmeans(feats[idx], k_c, n_iter=n_iter, seed=seed)
        dist = 1.0 - np.sum(feats[idx] * centers[assign], axis=1)
        for j in range(k_c):
            mine = np.flatnonzero(assign == j)
            order = mine[np.argsort(dist[mine], kind="stable")][:n_per_cluster]
            rows.extend((c, j, float(dist[r]), int(idx[r])) for r in order)
    members = tuple(
        BankMember(
            member_id=f"m{i:06d}",
            class_index=c,
            cluster=j,
            source=kept[r][1],
            box=kept[r][2],
            mpp=kept[r][3],
            distance=float(np.float32(d)),
        )
        for i, (c, j, d, r) in enumerate(rows)
    )
    sel = np.array([r for *_, r in rows], dtype=np.int64)
    return ImageBank(
        class_spec=class_spec,
        encoder_id=encoder.encoder_id,
        k=k,
        members=members,
        features=feats[sel] if sel.size else np.zeros((0, int(encoder.dim)), np.float32),
        thumbnails=thumbs[sel] if sel.size else np.zeros((0, thumbnail_size, thumbnail_size, 3), np.uint8),
        n_per_cluster=n_per_cluster,
        encoder_input_size=int(encoder.input_size),
        data_scale=data_scale,
    )
