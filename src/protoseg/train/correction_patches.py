"""Training patches of a retrain from corrections: corrected and reviewed windows of each store (painted class,
else the class shown when reviewed), and replay windows carrying the parent's scores, shared over every slide."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import IGNORE_INDEX
from protoseg.corrections import CorrectionStore
from protoseg.corrections.store import same_mpp
from protoseg.models.checkpoint import Checkpoint
from protoseg.train.errors import TrainingError
from protoseg.train.events import Callback, EventKind, TrainEvent, emit
from protoseg.train.retrain_settings import RetrainSettings

#: Stage name of the events while the patches are prepared (before the optimiser steps).
PREPARE_STAGE = "corrections"


@dataclass(frozen=True)
class Patch:
    """One training patch: pixels, hard targets and (replay) the parent's scores."""

    image: np.ndarray  # uint8 (p, p, 3)
    target: np.ndarray  # uint8 (p, p): class index, IGNORE_INDEX elsewhere
    soft: np.ndarray | None = None  # uint8 (C+1, p, p): the parent's scores x 255 (replay), all 0 beyond the grid


class CorrectionPatches(Dataset):
    """In-memory training patches, repeated up to ``min_len`` samples an epoch; flips / rot90 drawn from the
    sampler's per-sample seed (so repeats differ)."""

    def __init__(self, patches: Sequence[Patch], channels: int, min_len: int = 0) -> None:
        self.patches = list(patches)
        self.channels = channels
        self.length = max(len(self.patches), min_len) if self.patches else 0

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> dict[str, Any]:
        p = self.patches[int(key) % len(self.patches)]
        seed = int(getattr(key, "seed", 0))
        size = p.target.shape
        soft = p.soft if p.soft is not None else np.zeros((self.channels, *size), np.uint8)
        image, target = p.image, p.target
        k, flip = seed % 4, (seed >> 2) & 1
        image, target, soft = np.rot90(image, k, (0, 1)), np.rot90(target, k, (0, 1)), np.rot90(soft, k, (1, 2))
        if flip:
            image, target, soft = image[:, ::-1], target[:, ::-1], soft[:, :, ::-1]
        soft_t = torch.from_numpy(np.ascontiguousarray(soft)).float().div_(255.0)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0),
            "mask": torch.from_numpy(np.ascontiguousarray(target).astype(np.int64)),
            "soft": soft_t,
            "soft_weight": (soft_t.sum(dim=0) > 0).float(),
        }


def _window(store: CorrectionStore, y: int, x: int, p: int) -> np.ndarray:
    """Store labels of the p x p window at (y, x), 0 beyond the grid."""
    out = np.zeros((p, p), np.uint8)
    y1, x1 = min(y + p, store.shape[0]), min(x + p, store.shape[1])
    out[: y1 - y, : x1 - x] = store.read(y, y1, x, x1)
    return out


def _reviewed_cells(store: CorrectionStore) -> np.ndarray:
    """Boolean (rows, cols) grid of the blocks marked reviewed."""
    return np.asarray(store.reviewed[...]) != 0


def _reviewed_window(store: CorrectionStore, cells: np.ndarray, y: int, x: int, p: int) -> np.ndarray:
    """Boolean p x p mask of the window at (y, x) lying in reviewed blocks (False beyond the grid)."""
    c = store.chunk
    ys = np.arange(y, y + p) // c
    xs = np.arange(x, x + p) // c
    inside = (np.arange(y, y + p) < store.shape[0])[:, None] & (np.arange(x, x + p) < store.shape[1])[None, :]
    rows, cols = cells.shape
    return inside & cells[np.minimum(ys, rows - 1)][:, np.minimum(xs, cols - 1)]


def _corrected_windows(store: CorrectionStore, p: int, reviewed: np.ndarray | None = None) -> list[tuple[int, int]]:
    """(row, col) of the p-aligned windows holding at least one corrected pixel (or, given the ``reviewed``
    block grid, overlapping a reviewed block), sorted."""
    found: set[tuple[int, int]] = set()
    c = store.chunk
    for cy, cx, block in store.stored_chunks():
        ys, xs = np.nonzero(block)
        found.update(zip(((ys + cy * c) // p).tolist(), ((xs + cx * c) // p).tolist()))
    if reviewed is not None:
        for cy, cx in zip(*np.nonzero(reviewed), strict=True):
            y0, y1 = int(cy) * c, min((int(cy) + 1) * c, store.shape[0])
            x0, x1 = int(cx) * c, min((int(cx) + 1) * c, store.shape[1])
            found.update((r, q) for r in range(y0 // p, -(-y1 // p)) for q in range(x0 // p, -(-x1 // p)))
    return sorted(found)


def _replay_windows(
    store: CorrectionStore, p: int, taken: set[tuple[int, int]], n: int, seed: int
) -> list[tuple[int, int]]:
    """Up to ``n`` distinct p-aligned windows without corrections, drawn at random (seeded)."""
    rows, cols = -(-store.shape[0] // p), -(-store.shape[1] // p)
    free = rows * cols - len(taken)
    if n <= 0 or free <= 0:
        return []
    rng = np.random.default_rng(seed)
    if free <= 4 * n or rows * cols <= 100_000:
        cells = [(r, c) for r in range(rows) for c in range(cols) if (r, c) not in taken]
        pick = rng.permutation(len(cells))[: min(n, len(cells))]
        return sorted(cells[i] for i in pick)
    out: set[tuple[int, int]] = set()
    while len(out) < n:
        r, c = int(rng.integers(rows)), int(rng.integers(cols))
        if (r, c) not in taken:
            out.add((r, c))
    return sorted(out)


def replay_shares(free: Sequence[int], total: int) -> list[int]:
    """Replay windows per slide: ``total`` split in proportion to each slide's free windows (largest remainder),
    so replay comes from every slide given, corrected or not, and never exceeds a slide's free windows."""
    room = sum(max(0, f) for f in free)
    total = min(total, room)
    if total <= 0:
        return [0] * len(free)
    exact = [total * max(0, f) / room for f in free]
    out = [int(e) for e in exact]
    for i in sorted(range(len(free)), key=lambda i: out[i] - exact[i])[: total - sum(out)]:
        out[i] += 1
    return out


def _patches_of_store(
    store: CorrectionStore,
    predictor: Any,
    p: int,
    settings: RetrainSettings,
    seed: int,
    progress: Callable[[int], None],
    corrected: list[tuple[int, int]],
    reviewed: np.ndarray | None,
    n_replay: int,
) -> tuple[list[Patch], int]:
    """Patches of the ``corrected`` windows (``reviewed``: the reviewed block grid when trusted) and ``n_replay``
    replay patches of one store (``predictor``: the parent's); returns (patches, corrected patch count)."""
    from protoseg.infer.reader import open_any

    slide_path = Path(store.slide)
    if not slide_path.exists():
        raise TrainingError(
            f"slide {slide_path} of corrections {store.path} is missing; put it back at that path "
            "(corrections are tied to their slide file)."
        )
    geom = predictor.geometry(open_any(slide_path))
    grid = (geom.grid.height, geom.grid.width)
    if grid != tuple(store.shape) or not same_mpp(geom.mpp, store.mpp):
        raise TrainingError(
            f"corrections {store.path} were painted on a {store.shape[0]}x{store.shape[1]} grid at "
            f"{'unknown' if store.mpp is None else f'{store.mpp:g}'} µm/px, "
            f"but the checkpoint predicts {slide_path.name} on {grid[0]}x{grid[1]} at {geom.mpp} µm/px; retrain from "
            "the checkpoint the corrections were painted on."
        )
    patches: list[Patch] = []
    for r, c in corrected:
        y, x = r * p, c * p
        labels = _window(store, y, x, p).astype(np.int16) - 1
        target = np.where(labels >= 0, labels, IGNORE_INDEX).astype(np.uint8)
        confirmed = None if reviewed is None else _reviewed_window(store, reviewed, y, x, p) & (labels < 0)
        if confirmed is not None and confirmed.any():
            w, h = min(p, grid[1] - x), min(p, grid[0] - y)
            shown = np.full((p, p), -1, np.int16)
            shown[:h, :w] = store.read_accepted(y, y + h, x, x + w)
            unknown = confirmed & (shown < 0)
            if unknown.any():  # reviewed before the store kept what was shown: the parent's prediction
                shown[:h, :w] = np.where(
                    unknown[:h, :w], np.argmax(predictor.predict_box(geom, (x, y, w, h)), axis=0), shown[:h, :w]
                )
            target = np.where(confirmed & (shown >= 0), shown, target).astype(np.uint8)
        if (target != IGNORE_INDEX).any():
            patches.append(Patch(geom.reader.read((x, y, p, p)), target))
        progress(1)
    n_corrected = len(patches)
    for r, c in _replay_windows(store, p, set(corrected), n_replay, seed):
        x, y = c * p, r * p
        w, h = min(p, grid[1] - x), min(p, grid[0] - y)
        scores = predictor.predict_box(geom, (x, y, w, h))
        soft = np.zeros((scores.shape[0], p, p), np.uint8)
        soft[:, :h, :w] = np.clip(np.rint(scores * 255.0), 0, 255).astype(np.uint8)
        target = np.full((p, p), IGNORE_INDEX, np.uint8)
        patches.append(Patch(geom.reader.read((x, y, p, p)), target, soft))
        progress(1)
    return patches, n_corrected


def prepare_patches(
    stores: Sequence[CorrectionStore],
    ckpt: Checkpoint,
    p: int,
    settings: RetrainSettings,
    callbacks: Sequence[Callback],
    cancel: CancelToken,
) -> tuple[list[Patch], int]:
    """All stores' patches, with progress events (stage ``corrections``) and the cancel token checked."""
    reviewed = [_reviewed_cells(s) if settings.trust_reviewed else None for s in stores]
    corrected = [_corrected_windows(s, p, r) for s, r in zip(stores, reviewed, strict=True)]
    windows = [len(c) for c in corrected]
    free = [(-(-s.shape[0] // p)) * (-(-s.shape[1] // p)) - w for s, w in zip(stores, windows, strict=True)]
    replay = replay_shares(free, round(settings.replay * sum(windows)))
    total = sum(windows) + sum(replay)
    done = 0
    emit(callbacks, TrainEvent(EventKind.START, PREPARE_STAGE, 0, 0, total, message="preparing correction patches"))

    def progress(n: int) -> None:
        nonlocal done
        done += n
        emit(callbacks, TrainEvent(EventKind.STEP, PREPARE_STAGE, 0, done, total))
        cancel.raise_if_cancelled("retrain preparation")

    from protoseg.infer.predictor import Predictor

    predictor = Predictor(ckpt, device=settings.device, tta=False)  # one model for every slide
    patches: list[Patch] = []
    n_corrected = 0
    for i, store in enumerate(stores):
        seed = settings.seed * 7919 + i
        part, n = _patches_of_store(store, predictor, p, settings, seed, progress, corrected[i], reviewed[i], replay[i])
        patches.extend(part)
        n_corrected += n
    emit(callbacks, TrainEvent(EventKind.END, PREPARE_STAGE, 0, total, total))
    return patches, n_corrected
