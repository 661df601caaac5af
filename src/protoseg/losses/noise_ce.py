"""Stage-2 segmentation losses: cross-entropy with ignore index (the default, plain CE as in PBIP),
a confidence-weighted option and a noise-reduced variant.

The confidence-weighted CE weights confident pseudo-mask pixels *up* (w = 1 + confidence), so no
pixel counts less than in plain CE (background from the glass detector has confidence 1). The
noise-reduced CE weights pixels by their confidence (down-weighting weak ones) and can drop the
highest-loss fraction of pixels (small-loss selection, loss truncation / co-teaching style).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protoseg.classes import IGNORE_INDEX
from protoseg.losses._common import LossInputError, check_ndim, zero_like_graph


def _prepare(logits: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Check shapes/values; bilinearly upsample logits to the target size when they differ."""
    check_ndim("logits", logits, 4, "(B, C+1, H, W)")
    check_ndim("target", target, 3, "(B, H, W)")
    if target.shape[0] != logits.shape[0]:
        raise LossInputError(f"target batch size {target.shape[0]} must equal logits batch size {logits.shape[0]}")
    if target.is_floating_point():
        raise LossInputError("target must be an integer (long) class map, got a float tensor")
    target = target.long()
    n_out = logits.shape[1]
    bad = (target != IGNORE_INDEX) & ((target < 0) | (target >= n_out))
    if bool(bad.any()):
        raise LossInputError(
            f"target values must be in 0..{n_out - 1} (tissue classes, background = "
            f"{n_out - 1}) or {IGNORE_INDEX} (ignore); found {sorted(set(target[bad].tolist()))[:5]}"
        )
    if logits.shape[-2:] != target.shape[-2:]:
        logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
    return logits, target


def segmentation_ce(
    logits: Tensor, target: Tensor, ignore_index: int = IGNORE_INDEX, weight: Tensor | None = None
) -> Tensor:
    """Mean pixel cross-entropy over non-ignored pixels (weighted mean with per-class ``weight`` (C+1,));
    0 (with gradient) when all are ignored.

    ``logits`` (B, C+1, h, w) (upsampled to the target size if needed), ``target`` (B, H, W).
    """
    logits, target = _prepare(logits, target)
    if not bool((target != ignore_index).any()):
        return zero_like_graph(logits)
    if weight is not None:
        weight = weight.to(device=logits.device, dtype=logits.dtype)
    return F.cross_entropy(logits, target, weight=weight, ignore_index=ignore_index)


def confidence_weighted_ce(
    logits: Tensor, target: Tensor, confidence: Tensor, ignore_index: int = IGNORE_INDEX
) -> Tensor:
    """sum(w * CE) / sum(w) over non-ignored pixels with w = 1 + clamp(confidence, 0, 1): confident
    pixels up to twice the weight, none below plain CE's; 0 (with gradient) when all are ignored."""
    logits, target = _prepare(logits, target)
    if confidence.shape != target.shape:
        raise LossInputError(
            f"confidence must have the target's shape {tuple(target.shape)}, got {tuple(confidence.shape)}"
        )
    keep = target != ignore_index
    if not bool(keep.any()):
        return zero_like_graph(logits)
    ce = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")
    weight = (1.0 + confidence.detach().to(ce.dtype).clamp(0.0, 1.0)) * keep
    return (weight * ce).sum() / weight.sum()


def noise_reduced_ce(
    logits: Tensor,
    target: Tensor,
    confidence: Tensor | None = None,
    confidence_threshold: float = 0.0,
    drop_fraction: float = 0.0,
) -> Tensor:
    """Noise-reduced pixel CE for training on pseudo-masks.

    Rule, over the non-ignored pixels (target != 255) of the whole batch:
      1. weight w = clamp(confidence, 0, 1) (1 when ``confidence`` is None); pixels with
         confidence < ``confidence_threshold`` get w = 0;
      2. of the remaining pixels, the floor(drop_fraction * n) with the highest CE (detached)
         are dropped as probable label noise;
      3. loss = sum(w * CE) / sum(w) over the kept pixels (0 with gradient if none is kept).
    With the defaults this is confidence-weighted CE, and plain CE when confidence is None.
    """
    logits, target = _prepare(logits, target)
    if not 0.0 <= drop_fraction < 1.0:
        raise LossInputError(f"drop_fraction must be in [0, 1), got {drop_fraction}")
    ce = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX, reduction="none")
    keep = target != IGNORE_INDEX
    if confidence is None:
        weight = torch.ones_like(ce)
    else:
        if confidence.shape != target.shape:
            raise LossInputError(
                f"confidence must have the target's shape {tuple(target.shape)}, got {tuple(confidence.shape)}"
            )
        weight = confidence.detach().to(ce.dtype).clamp(0.0, 1.0)
        keep = keep & (confidence.detach() >= confidence_threshold)
    weight = weight * keep
    n_drop = int(drop_fraction * int(keep.sum()))
    if n_drop > 0:
        ranked = ce.detach().masked_fill(~keep, float("-inf")).reshape(-1)
        worst = torch.topk(ranked, n_drop).indices
        weight = weight.reshape(-1).index_fill(0, worst, 0.0).reshape(weight.shape)
    denom = weight.sum()
    if not bool(denom > 0):
        return zero_like_graph(logits)
    return (weight * ce).sum() / denom
