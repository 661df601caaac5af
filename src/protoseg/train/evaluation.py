"""Evaluate stage-1 pseudo-masks and stage-1/2 predictions against ground-truth masks (background = C).

``pseudo_masks`` is the one CAM -> pseudo-mask rule: stage-1 validation, ``protoseg eval --use-labels``
and the pseudo-mask export all call it, so the quality reported is the quality of the exported masks.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from protoseg import cams as cam_ops
from protoseg.classes import IGNORE_INDEX, ClassSpec
from protoseg.config import ProtosegConfig, PseudoLabelConfig
from protoseg.data.datasets import PatchDataset
from protoseg.data.errors import DataError
from protoseg.data.masks import labels_from_mask
from protoseg.metrics import ConfusionMatrix, Protocol, SegMetrics, apply_protocol
from protoseg.models.classnet import ClassNet, ClassNetOutput, eval_mode

logger = logging.getLogger(__name__)


def flat_metrics(m: SegMetrics) -> dict[str, float]:
    """Summary numbers for logs/events: mIoU, FwIoU, Dice, pixel accuracy, coverage, boundary IoU, IoU per class."""
    out = {"mIoU": m.miou, "FwIoU": m.fwiou, "Dice": m.mean_dice, "pixel_acc": m.pixel_accuracy}
    out["coverage"] = m.coverage
    if m.mean_boundary_iou is not None:
        out["bIoU"] = m.mean_boundary_iou
    for name, v in zip(m.class_names, m.iou):
        out[f"IoU_{name}"] = float(v)
    return {k: float(v) for k, v in out.items() if v is not None and not math.isnan(float(v))}


def _masked_indices(dataset: Dataset) -> tuple[list[int], str] | None:
    """Indices of the samples of a folder split (or a subset of one) that have a mask, and the split's
    name; None for other datasets (their samples are assumed to carry masks)."""
    if isinstance(dataset, PatchDataset):
        return dataset.masked(), dataset.describe()
    if isinstance(dataset, Subset) and isinstance(dataset.dataset, PatchDataset):
        have = set(dataset.dataset.masked())
        return [j for j, i in enumerate(dataset.indices) if int(i) in have], dataset.dataset.describe()
    return None


def masked_split(dataset: Dataset) -> tuple[Dataset | None, str]:
    """The samples of ``dataset`` that have a mask (``dataset`` itself when all do; None when none does) and
    the split's name: metrics compare predictions with masks, so samples without one are left out (logged)."""
    found = _masked_indices(dataset)
    if found is None:
        return dataset, "the dataset"
    keep, name = found
    total = len(dataset)  # type: ignore[arg-type]
    if not keep:
        return None, name
    if len(keep) < total:
        logger.warning(
            "%d of %d patches of %s have no mask; the metrics use the %d with one",
            total - len(keep),
            total,
            name,
            len(keep),
        )
        return Subset(dataset, keep), name
    return dataset, name


#: What happens when the val split has no masks, by default (a stage with a mask-free fallback says its own).
SKIPPED_WITHOUT_MASKS = (
    "validation is skipped (pseudo-mask and segmentation quality need a mask per patch); "
    "the last epoch's checkpoint is kept as best.pt"
)


def validation_split(dataset: Dataset | None, without_masks: str = SKIPPED_WITHOUT_MASKS) -> Dataset | None:
    """What validation scores: the masked samples of ``dataset``; None (``without_masks`` said once here)
    when it has no masks, e.g. a generic dataset whose val split lists image-level labels only."""
    if dataset is None:
        return None
    scored, name = masked_split(dataset)
    if scored is None:
        logger.warning("%s has no masks: %s", name, without_masks)
    return scored


def _scored(dataset: Dataset) -> Dataset:
    """``masked_split`` for evaluation, which has nothing to report without masks: DataError naming the split."""
    scored, name = masked_split(dataset)
    if scored is None:
        raise DataError(
            f"{name} has no masks, so predictions cannot be scored; evaluate on a split with a mask per patch "
            "(e.g. test/img + test/mask, or a 'mask' column in labels.csv)"
        )
    return scored


def _matrix(classes: ClassSpec, boundary: bool) -> ConfusionMatrix:
    return ConfusionMatrix(
        classes.num_classes + 1,
        ignore_index=IGNORE_INDEX,
        background_index=classes.background_index,
        class_names=[*classes.names, classes.background_name],
        boundary_dilation_ratio=0.02 if boundary else None,
    )


def _report(cm: ConfusionMatrix, classes: ClassSpec, protocol: Protocol) -> dict[str, float]:
    out = flat_metrics(cm.compute())
    if Protocol(protocol) is Protocol.TISSUE:  # no ground-truth background: its IoU means nothing
        out.pop(f"IoU_{classes.background_name}", None)
    return out


def background_mask(images: torch.Tensor, rules: PseudoLabelConfig) -> torch.Tensor | None:
    """Glass background (B, H, W) of [0, 1] images under ``rules`` (None when ``rules.glass`` is off)."""
    if not rules.glass:
        return None
    return cam_ops.glass_background(images, rules.bg_open_radius, rules.bg_min_size)


def pseudo_masks(
    net: ClassNet, images: torch.Tensor, labels: torch.Tensor | None, cfg: ProtosegConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pseudo-mask (B, H, W) and its per-pixel confidence (B, H, W) in [0, 1] from fused, gated CAMs.

    Mask: argmax over the gated classes (label-gated with ``labels``, score-gated without),
    uncertain pixels 255, background C only where the glass detector finds glass; CAMs averaged over the
    ``stage1.pseudo.scales`` input scales. Confidence:
    the max CAM on tissue pixels, 1 on glass (the detector is sure), 0 on ignored pixels.
    """
    return pseudo_masks_from_output(net, net.forward_multiscale(images, cfg.stage1.pseudo.scales), images, labels, cfg)


def pseudo_masks_from_output(
    net: ClassNet, out: ClassNetOutput, images: torch.Tensor, labels: torch.Tensor | None, cfg: ProtosegConfig
) -> tuple[torch.Tensor, torch.Tensor]:
    """``pseudo_masks`` from a forward pass ``out`` of ``images`` already computed (``stage1.pseudo`` rules)."""
    rules = cfg.stage1.pseudo
    size = tuple(images.shape[-2:])
    cams = net.fused_cams(out, size, labels=labels, score_gate=labels is None, norm=rules.cams)
    bg = background_mask(images, rules)
    mask = cam_ops.pseudo_labels(cams, bg, rules.ignore_below, rules.tie_margin)
    conf = cam_ops.confidence(cams).clamp(0, 1)
    conf = conf.masked_fill(mask == IGNORE_INDEX, 0.0)
    if bg is not None:
        conf = conf.masked_fill(bg.to(conf.device), 1.0)
    return mask, conf


def evaluate_pseudo(
    net: ClassNet,
    dataset: Dataset,
    classes: ClassSpec,
    cfg: ProtosegConfig,
    device: torch.device,
    use_labels: bool = True,
    boundary: bool = False,
    protocol: Protocol = Protocol.PBIP,
    label_min_share: float | None = None,
) -> dict[str, float]:
    """Quality of stage-1 pseudo-masks (label-gated CAMs when ``use_labels``, else the label-free
    score-gated prediction) on a masked split; ignored pixels count as misses (see ``coverage``).
    ``label_min_share``: the gating labels are the classes covering that share of each patch's mask (the
    tile baseline's rule, ``data.masks.labels_from_mask``) instead of the dataset's labels."""
    cm = _matrix(classes, boundary)
    loader = DataLoader(_scored(dataset), batch_size=cfg.data.batch_size, shuffle=False)
    net.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            y = None
            if use_labels:
                y = _gate_labels(batch, classes, label_min_share).to(device)
            pred, _ = pseudo_masks(net, x, y, cfg)
            target = apply_protocol(batch["mask"].numpy(), protocol, classes.background_index)
            cm.update(pred.cpu().numpy(), target)
    return _report(cm, classes, protocol)


def _gate_labels(batch: dict, classes: ClassSpec, min_share: float | None) -> torch.Tensor:
    """(B, C) gating labels of a batch: the dataset's (``min_share`` None), else those of its masks."""
    return batch["label"] if min_share is None else _mask_labels(batch["mask"], classes, min_share)


def _mask_labels(masks: torch.Tensor, classes: ClassSpec, min_share: float) -> torch.Tensor:
    """(B, C) labels of a batch of index masks: the classes covering at least ``min_share`` of each."""
    rows = [labels_from_mask(m.numpy(), classes.num_classes, min_share) for m in masks]
    return torch.as_tensor(np.stack(rows))


def evaluate_stage1(
    net: ClassNet,
    dataset: Dataset,
    classes: ClassSpec,
    cfg: ProtosegConfig,
    device: torch.device,
    free_protocol: Protocol = Protocol.TISSUE,
) -> dict[str, float]:
    """Stage-1 validation from one forward pass per batch: the label-gated pseudo-mask metrics (as
    ``evaluate_pseudo``, pbip protocol) and, prefixed ``label_free_``, those of the label-free prediction a
    user gets (``ClassNet.predict`` argmax, as ``eval`` without ``--use-labels``) under ``free_protocol``."""
    gated, free = _matrix(classes, False), _matrix(classes, False)
    loader = DataLoader(_scored(dataset), batch_size=cfg.data.batch_size, shuffle=False)
    with torch.no_grad(), eval_mode(net):
        for batch in loader:
            x = batch["image"].to(device)
            out = net(x)
            pseudo, _ = pseudo_masks_from_output(net, out, x, batch["label"].to(device), cfg)
            mask = batch["mask"].numpy()
            gated.update(pseudo.cpu().numpy(), apply_protocol(mask, Protocol.PBIP, classes.background_index))
            pred = net.label_free_scores(out, x).argmax(1).cpu().numpy()
            free.update(pred, apply_protocol(mask, free_protocol, classes.background_index))
    label_free = _report(free, classes, free_protocol)
    return {**_report(gated, classes, Protocol.PBIP), **{f"label_free_{k}": v for k, v in label_free.items()}}


def evaluate_segmentation(
    model: torch.nn.Module,
    dataset: Dataset,
    classes: ClassSpec,
    device: torch.device,
    batch_size: int = 8,
    tta: bool = False,
    boundary: bool = False,
    protocol: Protocol = Protocol.PBIP,
    use_labels: bool = False,
    label_min_share: float | None = None,
) -> dict[str, float]:
    """Metrics of ``model.predict`` argmax maps (stage 2, or stage 1 score-gated) on a masked split.
    ``use_labels``: the argmax only among each patch's labelled classes and background (a label-gated map, as
    stage 1's pseudo-masks; labels as in ``evaluate_pseudo``)."""
    cm = _matrix(classes, boundary)
    loader = DataLoader(_scored(dataset), batch_size=batch_size, shuffle=False)
    model.eval()
    with torch.no_grad():
        for batch in loader:
            x = batch["image"].to(device)
            probs = model.predict(x, flip_tta=tta) if tta else model.predict(x)
            if use_labels:
                absent = ~_gate_labels(batch, classes, label_min_share).to(device=probs.device).bool()
                probs = probs.clone()
                probs[:, : classes.num_classes][absent] = float("-inf")
            target = apply_protocol(batch["mask"].numpy(), protocol, classes.background_index)
            cm.update(probs.argmax(1).cpu().numpy(), target)
    return _report(cm, classes, protocol)
