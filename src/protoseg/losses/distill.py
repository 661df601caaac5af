"""Distillation to a parent model's scores (learning without forgetting, Li & Hoiem 2016): KL(parent || model)
per pixel, so fine-tuning on a few corrections keeps the parent's behaviour (all classes, its uncertainty)
wherever nobody corrected it."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from protoseg.losses._common import LossInputError, check_ndim, zero_like_graph


def distillation_kl(logits: Tensor, parent: Tensor, weight: Tensor) -> Tensor:
    """Mean over weighted pixels of KL(parent || softmax(logits)).

    ``logits`` (B, C+1, h, w), bilinearly upsampled to ``parent``'s size; ``parent`` (B, C+1, H, W) class
    probabilities; ``weight`` (B, H, W) >= 0 (0 = pixel not distilled). 0 (with gradient) when no pixel is.
    """
    check_ndim("logits", logits, 4, "(B, C+1, h, w)")
    check_ndim("parent", parent, 4, "(B, C+1, H, W)")
    check_ndim("weight", weight, 3, "(B, H, W)")
    if parent.shape[:2] != logits.shape[:2] or weight.shape != (parent.shape[0], *parent.shape[2:]):
        raise LossInputError(
            f"distillation shapes disagree: logits {tuple(logits.shape)}, parent {tuple(parent.shape)}, "
            f"weight {tuple(weight.shape)}"
        )
    total = weight.sum()
    if not bool(total > 0):
        return zero_like_graph(logits)
    if logits.shape[-2:] != parent.shape[-2:]:
        logits = F.interpolate(logits, size=parent.shape[-2:], mode="bilinear", align_corners=False)
    log_q = F.log_softmax(logits.float(), dim=1)
    p = parent.float().clamp_min(0)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(1e-8)
    kl = (p * (torch.log(p.clamp_min(1e-8)) - log_q)).sum(dim=1)
    return (kl * weight).sum() / total
