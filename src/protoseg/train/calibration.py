"""Per-class calibration of the label-free stage-1 class gate on validation images.

``ClassNet`` keeps, without labels, the classes whose image score sigmoid(logit) passes a threshold (always
the top one). One fixed threshold (``stage1.score_gate``, 0.8) drops present classes whose scores stay lower;
here each class gets the threshold in [0.05, 0.95] that best separates the validation images where it is
present (from their labels or masks) from those where it is absent, by F1 of "present" (or balanced
accuracy). A class with no positive or no negative validation image keeps the configured threshold.
"""

from __future__ import annotations

import enum
import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from protoseg import cams as cam_ops
from protoseg.models.classnet import ClassNet, eval_mode

logger = logging.getLogger(__name__)

#: Bounds of a calibrated threshold: a sane gate never keeps every class nor drops every one.
BOUNDS: tuple[float, float] = (0.05, 0.95)


class Criterion(str, enum.Enum):
    """What a calibrated threshold maximises over the validation images of one class."""

    F1 = "f1"
    BALANCED = "balanced"  # mean of the recall of present and of absent images


@dataclass(frozen=True)
class GateCalibration:
    """Per-class thresholds and, per class, whether it was calibrated (False: the configured fallback)."""

    thresholds: tuple[float, ...]
    calibrated: tuple[bool, ...]
    images: int
    criterion: Criterion = Criterion.F1


def _criterion_values(keep: np.ndarray, present: np.ndarray, criterion: Criterion) -> np.ndarray:
    """Criterion of each candidate: ``keep`` (T, N) bool predictions against ``present`` (N,) bool."""
    tp = (keep & present).sum(axis=1)
    fp = (keep & ~present).sum(axis=1)
    fn = (~keep & present).sum(axis=1)
    if criterion is Criterion.F1:
        return 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    tn = (~keep & ~present).sum(axis=1)
    return 0.5 * (tp / max(int(present.sum()), 1) + tn / max(int((~present).sum()), 1))


def best_threshold(
    scores: np.ndarray,
    present: np.ndarray,
    criterion: Criterion = Criterion.F1,
    bounds: tuple[float, float] = BOUNDS,
) -> float | None:
    """Threshold in ``bounds`` maximising ``criterion`` of ``scores >= t`` against ``present`` (both (N,));
    the middle optimum among midpoints between sorted scores; None without a positive and a negative image."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    present = np.asarray(present, dtype=bool).ravel()
    if present.all() or not present.any():
        return None
    values = np.unique(scores)
    cuts = np.concatenate([[bounds[0]], (values[:-1] + values[1:]) / 2, [bounds[1]]])
    candidates = np.unique(np.clip(cuts, *bounds))
    quality = _criterion_values(scores[None, :] >= candidates[:, None], present, Criterion(criterion))
    best = np.flatnonzero(quality >= quality.max() - 1e-12)
    return float(candidates[best[len(best) // 2]])


def calibrate_thresholds(
    scores: np.ndarray,
    present: np.ndarray,
    fallback: float,
    criterion: Criterion = Criterion.F1,
    bounds: tuple[float, float] = BOUNDS,
) -> GateCalibration:
    """Per-class thresholds from validation ``scores`` (N, C) and ``present`` (N, C); a class without a
    positive or a negative image keeps ``fallback``."""
    scores, present = np.asarray(scores), np.asarray(present, dtype=bool)
    found = [best_threshold(scores[:, c], present[:, c], criterion, bounds) for c in range(scores.shape[1])]
    return GateCalibration(
        thresholds=tuple(round(float(fallback if t is None else t), 4) for t in found),
        calibrated=tuple(t is not None for t in found),
        images=int(scores.shape[0]),
        criterion=Criterion(criterion),
    )


def image_scores(
    net: ClassNet, dataset: Dataset, device: torch.device, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Image scores sigmoid(last-stage logits) (N, C) of ``dataset`` (eval mode, no augmentation of its own)
    and the classes present (N, C) bool from each sample's label (its name, else its mask)."""
    scores, present = [], []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    with torch.no_grad(), eval_mode(net):
        for batch in loader:
            logits = net(batch["image"].to(device)).logits[-1]
            scores.append(cam_ops.class_scores(logits).float().cpu().numpy())
            present.append(batch["label"].numpy() > 0.5)
    c = net.config.num_classes
    if not scores:
        return np.zeros((0, c), np.float32), np.zeros((0, c), bool)
    return np.concatenate(scores), np.concatenate(present)


def format_thresholds(cal: GateCalibration, names: tuple[str, ...] | list[str]) -> str:
    """``TUM 0.42, STR 0.61*`` (``*``: fallback, not calibrated) for logs and the CLI."""
    return ", ".join(f"{n} {t:.2f}{'' if ok else '*'}" for n, t, ok in zip(names, cal.thresholds, cal.calibrated))


def presence_balanced_accuracy(
    scores: np.ndarray, present: np.ndarray, thresholds: tuple[float, ...] | list[float]
) -> float:
    """Macro balanced accuracy of the classes the label-free gate keeps (``cam_ops.gate_classes``: per-class
    ``thresholds``, always the top class) from image ``scores`` against ``present`` (N, C): per class the mean
    recall of the images with it and of those without (whichever exist), so keeping a class always or never
    scores 0.5 however common it is; NaN without images."""
    present = np.asarray(present, dtype=bool)
    if present.shape[0] == 0:
        return float("nan")
    s = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    keep = cam_ops.gate_classes(s, torch.tensor(thresholds, dtype=s.dtype)).numpy()
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = (keep & present).sum(axis=0) / present.sum(axis=0)
        specificity = (~keep & ~present).sum(axis=0) / (~present).sum(axis=0)
    return float(np.nanmean(np.nanmean(np.stack([recall, specificity]), axis=0)))


def calibrate_gate(
    net: ClassNet,
    dataset: Dataset,
    device: torch.device,
    names: tuple[str, ...] | list[str],
    batch_size: int = 8,
    criterion: Criterion = Criterion.F1,
) -> GateCalibration:
    """Calibrate ``net``'s label-free gate on ``dataset`` and store it in ``net.config.class_thresholds``;
    one log line with the thresholds, one naming the classes left at the configured threshold."""
    scores, present = image_scores(net, dataset, device, batch_size)
    return calibrate_from_scores(net, scores, present, names, criterion)


def calibrate_from_scores(
    net: ClassNet,
    scores: np.ndarray,
    present: np.ndarray,
    names: tuple[str, ...] | list[str],
    criterion: Criterion = Criterion.F1,
) -> GateCalibration:
    """``calibrate_gate`` from the image ``scores`` and ``present`` classes (N, C) of ``image_scores``."""
    cal = calibrate_thresholds(scores, present, net.config.score_threshold, criterion)
    net.set_class_thresholds(cal.thresholds)
    missing = [n for n, ok in zip(names, cal.calibrated) if not ok]
    if missing:
        logger.warning(
            "class gate not calibrated for %s (needs validation images with and without the class): "
            "fixed threshold %.2f",
            ", ".join(missing),
            net.config.score_threshold,
        )
    logger.info(
        "class gate calibrated on %d validation images (%s): %s",
        cal.images,
        cal.criterion.value,
        format_thresholds(cal, names),
    )
    return cal
