"""Segmentation metrics from an accumulable confusion matrix: IoU, mIoU, FwIoU, Dice, accuracy, boundary IoU.

Rows of the confusion matrix are ground truth, columns predictions. Classes absent from both
prediction and target get NaN scores and are left out of means. A prediction may leave pixels
unlabelled (``ignore_index``, e.g. uncertain pseudo-mask pixels): they count as misses of their
ground-truth class, and ``coverage`` says which fraction was labelled. Boundary IoU follows Cheng et
al. 2021: IoU restricted to the band a mask loses under d erosions by a 3x3 square (chessboard
distance <= d from the contour, the image edge counting as contour), d = max(1, round(2 % of the
image diagonal)). Two protocols (:class:`Protocol`): PBIP (background is a class of the matrix) and
MLPS/WSSS-Tissue (ground-truth background pixels are excluded).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from protoseg.classes import IGNORE_INDEX
from protoseg.errors import ProtosegError


class MetricsError(ProtosegError, ValueError):
    """Inputs to a metric are inconsistent (shapes, class range)."""


class Protocol(str, enum.Enum):
    """Evaluation protocol: which ground-truth pixels count (means are over tissue classes in both)."""

    PBIP = "pbip"  # every labelled pixel; background is a class, predicting it on tissue is an error
    TISSUE = "tissue"  # MLPS / WSSS-Tissue: ground-truth background pixels are excluded


def apply_protocol(target, protocol: Protocol, background_index: int | None, ignore_index: int = IGNORE_INDEX):
    """``target`` with the pixels the protocol excludes set to ``ignore_index`` (a copy when changed)."""
    protocol = Protocol(protocol)
    if protocol is Protocol.PBIP or background_index is None:
        return target
    out = _as_numpy(target).copy()
    out[out == background_index] = ignore_index
    return out


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _check(pred, target, num_classes: int, ignore_index: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pred, target = _as_numpy(pred).astype(np.int64), _as_numpy(target).astype(np.int64)
    if pred.shape != target.shape:
        raise MetricsError(f"prediction shape {pred.shape} differs from target shape {target.shape}")
    valid = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    for arr, what in ((target, "target"), (pred, "prediction")):
        bad = valid & ((arr < 0) | (arr >= num_classes))
        if what == "prediction" and ignore_index is not None:
            bad &= arr != ignore_index  # an unlabelled prediction is allowed (a miss)
        if bad.any():
            raise MetricsError(
                f"{what} has values {np.unique(arr[bad])[:5].tolist()} outside 0..{num_classes - 1} "
                f"(ignore_index={ignore_index}); pass the right num_classes (tissue classes + background)"
            )
    return pred, target, valid


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """(num_classes, num_classes) int64 counts, rows = target, columns = prediction (numpy or torch);
    pixels predicted as ``ignore_index`` are left out (see :func:`unlabelled_counts`)."""
    pred, target, valid = _check(pred, target, num_classes, ignore_index)
    if ignore_index is not None:
        valid = valid & (pred != ignore_index)
    idx = target[valid] * num_classes + pred[valid]
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def unlabelled_counts(pred, target, num_classes: int, ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per ground-truth class, how many of its pixels the prediction left as ``ignore_index``."""
    pred, target, valid = _check(pred, target, num_classes, ignore_index)
    miss = valid & (pred == ignore_index)
    return np.bincount(target[miss], minlength=num_classes)[:num_classes].astype(np.int64)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def boundary_region(mask: np.ndarray, d: float) -> np.ndarray:
    """Cheng et al.'s band: mask minus its d-fold 3x3 erosion, i.e. mask pixels within chessboard
    distance ``d`` of a non-mask pixel (the image edge counts, as their zero padding does)."""
    if not mask.any():
        return np.zeros_like(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    dist = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return mask & (dist <= d)


def boundary_width(shape: tuple[int, ...], dilation_ratio: float = 0.02) -> int:
    """Cheng et al.'s d: ``max(1, round(dilation_ratio * image diagonal))`` pixels."""
    return max(1, round(dilation_ratio * math.hypot(shape[-2], shape[-1])))


def boundary_counts(
    pred, target, num_classes: int, dilation_ratio: float = 0.02, ignore_index: int | None = IGNORE_INDEX
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class boundary intersection and union pixel counts of one 2-D map or a (B, H, W) batch."""
    pred, target, valid = _check(pred, target, num_classes, ignore_index)
    if pred.ndim == 2:
        pred, target, valid = pred[None], target[None], valid[None]
    inter = np.zeros(num_classes, np.int64)
    union = np.zeros(num_classes, np.int64)
    for p, t, v in zip(pred, target, valid):
        d = boundary_width(t.shape, dilation_ratio)
        for c in np.union1d(np.unique(p[v & (p != ignore_index)]), np.unique(t[v])):
            gb = boundary_region(t == c, d) & v
            pb = boundary_region(p == c, d) & v
            inter[c] += np.count_nonzero(gb & pb)
            union[c] += np.count_nonzero(gb | pb)
    return inter, union


def boundary_iou(
    pred, target, num_classes: int, dilation_ratio: float = 0.02, ignore_index: int | None = IGNORE_INDEX
) -> np.ndarray:
    """Per-class boundary IoU (NaN for classes absent from both); see :func:`boundary_counts`."""
    inter, union = boundary_counts(pred, target, num_classes, dilation_ratio, ignore_index)
    return _safe_div(inter.astype(float), union.astype(float))


@dataclass(frozen=True, eq=False)
class SegMetrics:
    """Per-class arrays (length = evaluated classes, NaN = absent) and their summaries."""

    class_names: tuple[str, ...]
    iou: np.ndarray
    dice: np.ndarray
    class_accuracy: np.ndarray
    miou: float
    fwiou: float
    mean_dice: float
    pixel_accuracy: float
    boundary_iou: np.ndarray | None = None
    mean_boundary_iou: float | None = None
    include_background: bool = False
    coverage: float = 1.0  # fraction of evaluated pixels the prediction labelled (not ignore_index)

    def as_dict(self) -> dict:
        """Plain-Python summary (per-class values keyed by class name; NaN -> None)."""

        def clean(v):
            return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

        keys = ("miou", "fwiou", "mean_dice", "pixel_accuracy", "mean_boundary_iou", "coverage")
        out = {k: clean(getattr(self, k)) for k in keys}
        for key in ("iou", "dice", "boundary_iou"):
            arr = getattr(self, key)
            if arr is not None:
                out[key] = {n: clean(float(v)) for n, v in zip(self.class_names, arr)}
        return out


def _nanmean(x: np.ndarray) -> float:
    x = x[~np.isnan(x)]
    return float(x.mean()) if x.size else float("nan")


class ConfusionMatrix:
    """Accumulate a confusion matrix (and optionally boundary IoU counts) over batches."""

    def __init__(
        self,
        num_classes: int,
        ignore_index: int | None = IGNORE_INDEX,
        background_index: int | None = None,
        class_names: Sequence[str] | None = None,
        boundary_dilation_ratio: float | None = None,
    ) -> None:
        if num_classes < 1:
            raise MetricsError("num_classes must be >= 1 (tissue classes + background)")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.background_index = background_index
        self.class_names = tuple(class_names) if class_names else tuple(str(i) for i in range(num_classes))
        if len(self.class_names) != num_classes:
            raise MetricsError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.boundary_dilation_ratio = boundary_dilation_ratio
        self.matrix = np.zeros((num_classes, num_classes), np.int64)
        self.unlabelled = np.zeros(num_classes, np.int64)
        self.b_inter = np.zeros(num_classes, np.int64)
        self.b_union = np.zeros(num_classes, np.int64)

    def update(self, pred, target) -> ConfusionMatrix:
        """Add a prediction / target pair (any shape; (H, W) or (B, H, W) for boundary IoU)."""
        self.matrix += confusion_matrix(pred, target, self.num_classes, self.ignore_index)
        if self.ignore_index is not None:
            self.unlabelled += unlabelled_counts(pred, target, self.num_classes, self.ignore_index)
        if self.boundary_dilation_ratio is not None:
            i, u = boundary_counts(pred, target, self.num_classes, self.boundary_dilation_ratio, self.ignore_index)
            self.b_inter += i
            self.b_union += u
        return self

    def merge(self, other: ConfusionMatrix) -> ConfusionMatrix:
        """Add another accumulator's counts (e.g. from another process before/after all-reduce)."""
        if other.num_classes != self.num_classes:
            raise MetricsError(f"cannot merge {other.num_classes}-class counts into {self.num_classes}-class counts")
        self.matrix += other.matrix
        self.unlabelled += other.unlabelled
        self.b_inter += other.b_inter
        self.b_union += other.b_union
        return self

    def state(self) -> np.ndarray:
        """All counts as one flat int64 vector (sum it across processes, then :meth:`load_state`)."""
        return np.concatenate([self.matrix.ravel(), self.b_inter, self.b_union, self.unlabelled])

    def load_state(self, state) -> ConfusionMatrix:
        """Replace the counts by a vector produced by :meth:`state` (possibly summed)."""
        s = _as_numpy(state).astype(np.int64).ravel()
        n = self.num_classes
        self.matrix = s[: n * n].reshape(n, n).copy()
        self.b_inter, self.b_union = s[n * n : n * n + n].copy(), s[n * n + n : n * n + 2 * n].copy()
        extra = s[n * n + 2 * n :]
        self.unlabelled = extra.copy() if extra.size == n else np.zeros(n, np.int64)
        return self

    def reset(self) -> None:
        self.matrix[:] = 0
        self.unlabelled[:] = 0
        self.b_inter[:] = 0
        self.b_union[:] = 0

    def compute(self, include_background: bool = False) -> SegMetrics:
        """Metrics; means skip NaN classes and the background class unless ``include_background``."""
        m = self.matrix.astype(np.float64)
        tp = np.diag(m)
        gt, pr = m.sum(axis=1) + self.unlabelled, m.sum(axis=0)
        iou = _safe_div(tp, gt + pr - tp)
        dice = _safe_div(2 * tp, gt + pr)
        acc = _safe_div(tp, gt)
        keep = np.ones(self.num_classes, bool)
        if self.background_index is not None and not include_background:
            keep[self.background_index] = False
        freq = gt[keep] / gt[keep].sum() if gt[keep].sum() > 0 else np.zeros(keep.sum())
        fwiou = float(np.nansum(freq * np.nan_to_num(iou[keep]))) if gt[keep].sum() > 0 else float("nan")
        biou = None
        if self.boundary_dilation_ratio is not None:
            biou = _safe_div(self.b_inter.astype(float), self.b_union.astype(float))
        total = m.sum() + self.unlabelled.sum()
        return SegMetrics(
            class_names=self.class_names,
            iou=iou,
            dice=dice,
            class_accuracy=acc,
            miou=_nanmean(iou[keep]),
            fwiou=fwiou,
            mean_dice=_nanmean(dice[keep]),
            pixel_accuracy=float(tp.sum() / total) if total else float("nan"),
            boundary_iou=biou,
            mean_boundary_iou=_nanmean(biou[keep]) if biou is not None else None,
            include_background=include_background,
            coverage=float(1.0 - self.unlabelled.sum() / total) if total else float("nan"),
        )
