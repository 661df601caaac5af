"""Evaluate stage-1 pseudo-masks and stage-2 predictions against ground-truth masks (background = C)."""

from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader, Dataset

from protoseg import cams as cam_ops
from protoseg.classes import IGNORE_INDEX, ClassSpec
from protoseg.config import ProtosegConfig
from protoseg.metrics import ConfusionMatrix, SegMetrics
from protoseg.models.classnet import ClassNet


def flat_metrics(m: SegMetrics) -> dict[str, float]:
    """Summary numbers for logs/events: mIoU, FwIoU, Dice, pixel accuracy, boundary IoU, IoU per class."""
    out = {"mIoU": m.miou, "FwIoU": m.fwiou, "Dice": m.mean_dice, "pixel_acc": m.pixel_accuracy}
    if m.mean_boundary_iou is not None:
        out["bIoU"] = m.mean_boundary_iou
    for name, v in zip(m.class_names, m.iou):
        out[f"IoU_{name}"] = float(v)
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def _matrix(classes: ClassSpec, boundary: bool) -> ConfusionMatrix:
    return ConfusionMatrix(
        classes.num_classes + 1,
        ignore_index=IGNORE_INDEX,
        background_index=classes.background_index,
        class_names=[*classes.names, classes.background_name],
        boundary_dilation_ratio=0.02 if boundary else None,
    )


def pseudo_masks(
    net: ClassNet, images: torch.Tensor, labels: torch.Tensor | None, cfg: ProtosegConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-mask (B,H,W; background = C) and confidence (B,H,W) from fused, gated CAMs."""
    rules = cfg.stage1.pseudo
    cams = net.cams(images, labels=labels)
    bg = cam_ops.background_seed(images, rules.bg_grey, rules.bg_min_size)
    return cam_ops.pseudo_labels(cams, bg, rules.bg_threshold), cam_ops.confidence(cams)


def evaluate_pseudo(
    net: ClassNet,
    dataset: Dataset,
    classes: ClassSpec,
    cfg: ProtosegConfig,
    device: torch.device,
    use_labels: bool = True,
    boundary: bool = False,
) -> dict[str, float]:
    """Quality of stage-1 pseudo-masks (label-gated CAMs when ``use_labels``) on a masked split."""
    cm = _matrix(classes, boundary)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False)
    net.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            y = batch["label"].to(device) if use_labels else None
            pred, _ = pseudo_masks(net, x, y, cfg)
            cm.update(pred.cpu().numpy(), batch["mask"].numpy())
    return flat_metrics(cm.compute())


def evaluate_segmentation(
    model: torch.nn.Module,
    dataset: Dataset,
    classes: ClassSpec,
    device: torch.device,
    batch_size: int = 8,
    tta: bool = False,
    boundary: bool = False,
) -> dict[str, float]:
    """Metrics of ``model.predict`` argmax maps (stage 2, or stage 1 score-gated) on a masked split."""
    cm = _matrix(classes, boundary)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            probs = model.predict(x, flip_tta=tta) if tta else model.predict(x)
            cm.update(probs.argmax(1).cpu().numpy(), batch["mask"].numpy())
    return flat_metrics(cm.compute())
