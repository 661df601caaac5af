"""Trivial baselines of a labelled split, from its ground-truth masks only, scored like ``protoseg eval``.

``one_class``: every pixel one tissue class (the best class, chosen with hindsight; label-free).
``tile_label``: each patch filled with one of the tissue classes present in its own mask (share of the
patch >= ``min_share``), picked by a fixed class priority (the best one, chosen with hindsight); it uses
image-level labels, so it is the bar for label-gated pseudo-masks (``eval --use-labels``). A patch with
no class present gets the priority's first class. Both are scored under the eval's :class:`Protocol`
with :class:`~protoseg.metrics.ConfusionMatrix`: a constant patch adds its mask's histogram to one
column of the confusion matrix, so no prediction map is ever built.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import IGNORE_INDEX, ClassSpec
from protoseg.data.errors import DataError
from protoseg.data.generic import generic_records
from protoseg.data.layouts import detect_layout, named_records
from protoseg.data.masks import DEFAULT_MIN_SHARE, load_mask
from protoseg.data.records import Layout, Split
from protoseg.data.resample import rescale_mask
from protoseg.metrics import ConfusionMatrix, MetricsError, Protocol, SegMetrics, apply_protocol

#: Up to this many tissue classes every priority is tried; above, pairwise swaps from a greedy start.
EXHAUSTIVE_MAX_CLASSES = 7


@dataclass(frozen=True)
class MaskCounts:
    """Per patch: scored pixels of each value 0..C (after the protocol) and each tissue class's share."""

    scored: np.ndarray  # (N, C + 1) int64, background at C (zero under the tissue protocol)
    shares: np.ndarray  # (N, C) float64, a class's pixels over all the patch's pixels
    protocol: Protocol


def count_mask(mask: np.ndarray, classes: ClassSpec, protocol: Protocol) -> tuple[np.ndarray, np.ndarray]:
    """One mask's scored histogram (C + 1,) under ``protocol`` and its tissue-class shares (C,)."""
    mask = np.asarray(mask)
    n = classes.num_classes + 1
    raw = mask[mask != IGNORE_INDEX].astype(np.int64).ravel()
    if raw.size and (raw.min() < 0 or raw.max() >= n):
        raise MetricsError(f"mask values outside 0..{n - 1} (or {IGNORE_INDEX} = ignore) for {list(classes.names)}")
    target = apply_protocol(mask, protocol, classes.background_index)
    scored = np.bincount(target[target != IGNORE_INDEX].astype(np.int64).ravel(), minlength=n)
    shares = np.bincount(raw, minlength=n)[: classes.num_classes] / max(mask.size, 1)
    return scored.astype(np.int64), shares


def count_masks(
    masks: Iterable[np.ndarray], classes: ClassSpec, protocol: Protocol | str = Protocol.PBIP
) -> MaskCounts:
    """:class:`MaskCounts` of index masks (0..C-1 classes, C background, 255 ignore)."""
    protocol = Protocol(protocol)
    pairs = [count_mask(m, classes, protocol) for m in masks]
    if not pairs:
        raise DataError("no masks to compute trivial baselines from")
    return MaskCounts(np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), protocol)


def split_masks(
    root: str | Path, split: Split | str, layout: Layout | str | None = None
) -> tuple[ClassSpec, list[Path]]:
    """Classes and mask files of one split of a dataset folder, in any layout (images are not opened)."""
    root, split = Path(root), Split(split)
    layout = Layout(layout) if layout is not None else detect_layout(root)
    classes, records = generic_records(root, split) if layout is Layout.GENERIC else named_records(root, split, layout)
    paths = [r.mask for r in records if r.mask is not None]
    if not paths:
        raise DataError(f"the {split.value} split of {root} has no masks, so there are no trivial baselines")
    return classes, paths


def score_fills(scored: np.ndarray, fills: np.ndarray, classes: ClassSpec) -> SegMetrics:
    """Metrics of filling patch ``i`` (scored histogram ``scored[i]``) with class ``fills[i]`` everywhere."""
    cm = ConfusionMatrix(
        classes.num_classes + 1,
        ignore_index=IGNORE_INDEX,
        background_index=classes.background_index,
        class_names=[*classes.names, classes.background_name],
    )
    columns = np.zeros_like(cm.matrix.T)
    np.add.at(columns, np.asarray(fills, np.int64), scored)  # row k of the transpose = column k
    cm.matrix += columns.T
    return cm.compute()


def _summary(m: SegMetrics, classes: ClassSpec, protocol: Protocol) -> dict[str, float]:
    """``mIoU`` and ``IoU_<class>`` as the eval reports them (NaN left out; no background IoU under tissue)."""
    out = {"mIoU": m.miou, **{f"IoU_{n}": float(v) for n, v in zip(m.class_names, m.iou)}}
    if protocol is Protocol.TISSUE:
        out.pop(f"IoU_{classes.background_name}", None)
    return {k: float(v) for k, v in out.items() if not math.isnan(v)}


def _miou(m: SegMetrics) -> float:
    return -1.0 if math.isnan(m.miou) else m.miou


def one_class_baseline(counts: MaskCounts, classes: ClassSpec) -> dict[str, Any]:
    """Every pixel the one tissue class that scores best (hindsight): class name, mIoU, IoU per class."""
    n = len(counts.scored)
    scores = [score_fills(counts.scored, np.full(n, c), classes) for c in range(classes.num_classes)]
    best = max(range(classes.num_classes), key=lambda c: _miou(scores[c]))
    return {"class": classes.names[best], "uses_labels": False, **_summary(scores[best], classes, counts.protocol)}


def priority_fills(present: np.ndarray, order: Sequence[int]) -> np.ndarray:
    """Per patch the first class of ``order`` present in it (``order[0]`` when none is)."""
    rank = np.empty(len(order), np.int64)
    rank[np.asarray(order)] = np.arange(len(order))
    ranked = np.where(present, rank[None, :], len(order))
    first = np.asarray(order)[np.minimum(ranked.min(axis=1), len(order) - 1)]
    return np.where(present.any(axis=1), first, order[0])


def _orders(num_classes: int, score: Callable[[tuple[int, ...]], float]) -> tuple[tuple[int, ...], str]:
    """Best class order by ``score(order)``: every order for few classes, else pairwise-swap hill climbing."""
    if num_classes <= EXHAUSTIVE_MAX_CLASSES:
        return max(itertools.permutations(range(num_classes)), key=score), "exhaustive"
    order, best = tuple(range(num_classes)), score(tuple(range(num_classes)))
    improved = True
    while improved:
        improved = False
        for i, j in itertools.combinations(range(num_classes), 2):
            cand = list(order)
            cand[i], cand[j] = cand[j], cand[i]
            value = score(tuple(cand))
            if value > best:
                order, best, improved = tuple(cand), value, True
    return order, "pairwise swaps"


def tile_label_baseline(counts: MaskCounts, classes: ClassSpec, min_share: float = DEFAULT_MIN_SHARE) -> dict[str, Any]:
    """Each patch one of its own labels (classes covering >= ``min_share``) by the best fixed priority
    (hindsight); label-gated. Priority, mIoU, IoU per class."""
    if not 0.0 <= min_share <= 1.0:
        raise MetricsError(f"min_share must be within 0..1, got {min_share}")
    present = (counts.shares >= min_share) & (counts.shares > 0)
    groups, inverse = np.unique(present, axis=0, return_inverse=True)  # few distinct label sets: score those
    grouped = np.zeros((len(groups), counts.scored.shape[1]), np.int64)
    np.add.at(grouped, inverse.ravel(), counts.scored)

    def score(order: tuple[int, ...]) -> float:
        return _miou(score_fills(grouped, priority_fills(groups, order), classes))

    order, search = _orders(classes.num_classes, score)
    metrics = score_fills(grouped, priority_fills(groups, order), classes)
    return {
        "priority": [classes.names[c] for c in order],
        "uses_labels": True,
        "min_share": float(min_share),
        "search": search,
        **_summary(metrics, classes, counts.protocol),
    }


def trivial_baselines(counts: MaskCounts, classes: ClassSpec, min_share: float = DEFAULT_MIN_SHARE) -> dict[str, Any]:
    """Both baselines of one split: ``{"protocol", "patches", "one_class", "tile_label"}``."""
    return {
        "protocol": counts.protocol.value,
        "patches": len(counts.scored),
        "one_class": one_class_baseline(counts, classes),
        "tile_label": tile_label_baseline(counts, classes, min_share),
    }


def split_baselines(
    root: str | Path,
    split: Split | str,
    layout: Layout | str | None = None,
    protocol: Protocol | str = Protocol.PBIP,
    min_share: float = DEFAULT_MIN_SHARE,
    scale: float = 1.0,
) -> dict[str, Any]:
    """:func:`trivial_baselines` of one split's masks (the patches ``eval`` scores), reading masks only; ``scale``:
    the masks resampled as the model's were (``data.scale``, nearest)."""
    classes, paths = split_masks(root, split, layout)
    counts = count_masks((rescale_mask(load_mask(p, classes), scale) for p in paths), classes, protocol)
    return trivial_baselines(counts, classes, min_share)


def _pct(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.1f}"


def fair_baseline(baselines: dict[str, Any], uses_labels: bool) -> dict[str, Any]:
    """The baseline a model must beat: ``tile_label`` when it saw image-level labels, else ``one_class``."""
    return baselines["tile_label" if uses_labels else "one_class"]


def comparison_line(model_miou: float | None, baselines: dict[str, Any]) -> str:
    """``mIoU 41.2 vs trivial (...): one class everywhere (TAS) 19.4, each image one of its labels (...) 60.5``."""
    one, tile = baselines["one_class"], baselines["tile_label"]
    return (
        f"mIoU {_pct(model_miou)} vs trivial ({baselines['protocol']} protocol, {baselines['patches']} patches): "
        f"one class everywhere ({one['class']}) {_pct(one.get('mIoU'))}, each image one of its labels "
        f"(label-gated, priority {'>'.join(tile['priority'])}) {_pct(tile.get('mIoU'))}"
    )


__all__ = [
    "DEFAULT_MIN_SHARE",
    "MaskCounts",
    "comparison_line",
    "count_mask",
    "count_masks",
    "fair_baseline",
    "one_class_baseline",
    "priority_fills",
    "score_fills",
    "split_baselines",
    "split_masks",
    "tile_label_baseline",
    "trivial_baselines",
]
