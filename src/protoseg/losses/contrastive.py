"""PSCL: pseudo-supervised pixel contrastive loss on CAM-derived pixel labels.

Supervised contrastive loss (Khosla et al., NeurIPS 2020, Eq. 2, the "L_out" form) applied to
sampled pixel embeddings whose labels come from thresholded CAMs plus a colour-based background
seed channel (pseudo-supervised contrastive learning, PSCL).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F
from torch import Tensor

from protoseg.cams import pseudo_labels_with_ignore
from protoseg.classes import IGNORE_INDEX
from protoseg.losses._common import (
    LossInputError,
    check_ndim,
    check_positive,
    zero_like_graph,
)

logger = logging.getLogger(__name__)


def pscl_labels(cams: Tensor, background: Tensor, tau: float = 0.25) -> Tensor:
    """PSCL pixel labels (B, H, W) long: argmax CAM where max CAM > tau, C on background, else 255.

    ``cams`` (B, C, H, W), ``background`` (B, H, W) bool background seed (it overrides CAMs).
    """
    check_ndim("cams", cams, 4, "(B, C, H, W)")
    check_ndim("background", background, 3, "(B, H, W)")
    n_classes = cams.shape[1]
    if background.shape != (cams.shape[0], *cams.shape[-2:]):
        raise LossInputError(
            f"background must have shape {(cams.shape[0], *cams.shape[-2:])}, got {tuple(background.shape)}"
        )
    if n_classes >= IGNORE_INDEX:
        raise LossInputError(f"at most {IGNORE_INDEX - 1} classes are supported, got {n_classes}")
    return pseudo_labels_with_ignore(cams.detach(), tau, background, IGNORE_INDEX)


def _balanced_sample(labels: Tensor, max_pixels: int, generator: torch.Generator | None) -> Tensor:
    """Indices of at most ``max_pixels`` labelled entries of flat CPU ``labels``, class-balanced.

    Each class gets an equal share of the budget; shares a small class cannot use pass on to the
    larger ones. All labelled pixels are kept when they fit in the budget.
    """
    labelled = torch.nonzero(labels != IGNORE_INDEX, as_tuple=False).squeeze(1)
    if labelled.numel() <= max_pixels:
        return labelled
    classes, counts = torch.unique(labels[labelled], return_counts=True)
    order = torch.argsort(counts).tolist()
    budget, remaining, chosen = max_pixels, len(order), []
    for i in order:
        share = budget // remaining
        members = labelled[labels[labelled] == classes[i]]
        take = min(int(counts[i]), share)
        if take:
            perm = torch.randperm(members.numel(), generator=generator)[:take]
            chosen.append(members[perm])
        budget -= take
        remaining -= 1
    return torch.cat(chosen) if chosen else labelled[:0]


def supcon_from_features(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """Supervised contrastive loss L_out on (N, D) features with (N,) labels (cosine similarity).

    L = mean over anchors i with >= 1 positive of
        -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p/t) / sum_{a != i} exp(z_i.z_a/t) ).
    Returns 0 (with gradient) when no anchor has a positive.
    """
    check_positive("temperature", temperature)
    n = features.shape[0]
    if n < 2:
        return zero_like_graph(features)
    z = F.normalize(features, dim=1)
    logits = (z @ z.t()) / temperature
    self_mask = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~self_mask
    n_pos = positive.sum(dim=1)
    has_pos = n_pos > 0
    if not bool(has_pos.any()):
        return zero_like_graph(features)
    pos_log_prob = torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    per_anchor = -pos_log_prob[has_pos] / n_pos[has_pos].to(log_prob.dtype)
    return per_anchor.mean()


def pixel_supcon_loss(
    embeddings: Tensor,
    labels: Tensor,
    temperature: float = 0.1,
    max_pixels: int = 1024,
    generator: torch.Generator | None = None,
) -> Tensor:
    """PSCL: supervised contrastive loss (L_out) over sampled labelled pixel embeddings.

    ``embeddings`` (B, D, h, w) (L2-normalised here), ``labels`` (B, H, W) long with 255 =
    ignore; labels of another size are nearest-resized to (h, w). At most ``max_pixels``
    labelled pixels are used, sampled class-balanced with ``generator`` (CPU generator). Anchors
    without a positive are excluded; fewer than 2 labelled pixels gives 0 (with gradient).
    """
    check_ndim("embeddings", embeddings, 4, "(B, D, h, w)")
    check_ndim("labels", labels, 3, "(B, H, W)")
    if labels.shape[0] != embeddings.shape[0]:
        raise LossInputError(
            f"labels batch size {labels.shape[0]} must equal embeddings batch size {embeddings.shape[0]}"
        )
    if max_pixels < 2:
        raise LossInputError(f"max_pixels must be >= 2, got {max_pixels}")
    h, w = embeddings.shape[-2:]
    if labels.shape[-2:] != (h, w):
        labels = F.interpolate(labels[:, None].float(), size=(h, w), mode="nearest")[:, 0]
    flat_labels = labels.long().reshape(-1).cpu()
    index = _balanced_sample(flat_labels, max_pixels, generator)
    if index.numel() < 2:
        logger.debug("PSCL: %d labelled pixel(s), need 2; loss is 0", index.numel())
        return zero_like_graph(embeddings)
    feats = embeddings.permute(0, 2, 3, 1).reshape(-1, embeddings.shape[1])
    device_index = index.to(embeddings.device)
    return supcon_from_features(feats[device_index], flat_labels[index].to(embeddings.device), temperature)
