"""PBIP foreground/background image prompting: adaptive CAM masks, FG/BG images, L_FGS / L_BGS.

Tang et al., "Prototype-Based Image Prompting for Weakly Supervised Histopathological Image
Segmentation", CVPR 2025 (ImgMatchNet): X_FG = b*M*X and X_BG = (1-b)*(1-M)*X with the adaptive
mask b = [R >= delta * max R] on the raw scaled similarity map R = s * cos (reference code:
``MaskAdapter_DynamicThreshold`` on ``cam4``, not a min-max-normalised CAM); their frozen-encoder
features are contrasted with the image-bank prototypes (InfoNCE-style L_FGS and L_BGS,
L_SIM = th1*L_FGS + th2*L_BGS).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from protoseg.losses._common import (
    LossInputError,
    check_ndim,
    check_positive,
    check_same,
    zero_like_graph,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FgBgBatch:
    """Foreground/background regions, one row per present (image, class) pair: each row's image and its
    FG / BG pixel weights; ``x_fg`` / ``x_bg`` are the masked images of the paper."""

    images: Tensor  #: (N, 3, H, W) X of each row
    w_fg: Tensor  #: (N, 1, H, W) b * M
    w_bg: Tensor  #: (N, 1, H, W) (1 - b) * (1 - M)
    batch_index: Tensor  #: (N,) long, image of each row
    class_index: Tensor  #: (N,) long, class of each row

    @property
    def x_fg(self) -> Tensor:
        """(N, 3, H, W) X_FG = b * M * X."""
        return self.w_fg * self.images

    @property
    def x_bg(self) -> Tensor:
        """(N, 3, H, W) X_BG = (1 - b) * (1 - M) * X."""
        return self.w_bg * self.images


@dataclass(frozen=True)
class SimilarityLoss:
    """L_SIM = fg_weight * L_FGS + bg_weight * L_BGS, with both terms for logging."""

    total: Tensor
    l_fgs: Tensor
    l_bgs: Tensor


def _upsample(maps: Tensor, size: tuple[int, int]) -> Tensor:
    if maps.shape[-2:] == size:
        return maps
    return F.interpolate(maps, size=size, mode="bilinear", align_corners=False)


def adaptive_masks(
    cams: Tensor, size: tuple[int, int], delta: float = 0.5, raw: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """PBIP adaptive mask: bilinearly upsample to ``size`` and threshold at delta * max.

    Returns ``(M_up, b)``: M_up (B, C, H, W) float in [0, 1] (clamped ``cams``, expected min-max
    normalised; the soft weight of X_FG / X_BG) and b (B, C, H, W) bool = [R >= delta * max_p R] per
    image and class, where R is the upsampled ``raw`` map (the scaled similarity s * cos, as in the
    PBIP code) or, without ``raw``, M_up itself. A class whose map is all zero gets b all True and
    therefore an all-zero X_FG; a raw map whose maximum is negative gets b all False.
    """
    check_ndim("cams", cams, 4, "(B, C, h, w)")
    if not 0.0 <= delta <= 1.0:
        raise LossInputError(f"delta must be in [0, 1], got {delta}")
    height, width = int(size[0]), int(size[1])
    m_up = _upsample(cams, (height, width)).clamp(0.0, 1.0)
    if raw is None:
        ref = m_up.detach()
    else:
        check_ndim("raw", raw, 4, "(B, C, h, w)")
        check_same("raw maps batch", raw.shape[0], "cams batch", cams.shape[0])
        check_same("raw maps classes", raw.shape[1], "cams classes", cams.shape[1])
        ref = _upsample(raw.detach().float(), (height, width))
    b = ref >= delta * ref.amax(dim=(-2, -1), keepdim=True)
    return m_up, b


def fg_bg_images(
    images: Tensor, cams: Tensor, labels: Tensor, delta: float = 0.5, raw: Tensor | None = None
) -> FgBgBatch:
    """PBIP X_FG = b*M*X and X_BG = (1-b)*(1-M)*X for every (image, class) with label == 1.

    ``images`` (B, 3, H, W) in [0, 1], ``cams`` (B, C, h, w) normalised CAMs (M), ``labels`` (B, C)
    multi-hot, ``raw`` (B, C, h, w) optional raw similarity maps that b is thresholded on (see
    ``adaptive_masks``).
    Rows are ordered by image then class. Gradients flow into ``cams`` through M (b is a
    non-differentiable threshold).
    """
    check_ndim("images", images, 4, "(B, 3, H, W)")
    check_ndim("cams", cams, 4, "(B, C, h, w)")
    check_ndim("labels", labels, 2, "(B, C)")
    check_same("cams batch size", cams.shape[0], "images batch size", images.shape[0])
    check_same("labels batch size", labels.shape[0], "images batch size", images.shape[0])
    check_same("labels classes", labels.shape[1], "cams classes", cams.shape[1])
    m_up, b = adaptive_masks(cams, (images.shape[-2], images.shape[-1]), delta, raw)
    pairs = torch.nonzero(labels > 0.5, as_tuple=False)
    batch_index, class_index = pairs[:, 0], pairs[:, 1]
    m = m_up[batch_index, class_index].unsqueeze(1)  # (N, 1, H, W)
    keep = b[batch_index, class_index].unsqueeze(1).to(images.dtype)
    return FgBgBatch(
        images=images[batch_index],
        w_fg=keep * m,
        w_bg=(1.0 - keep) * (1.0 - m),
        batch_index=batch_index,
        class_index=class_index,
    )


def class_similarities(feats: Tensor, prototypes: Tensor) -> Tensor:
    """Cosine similarity of each feature to each class: mean over the class's K prototypes.

    ``feats`` (N, d), ``prototypes`` (C, K, d) or (C, d); returns (N, C). Both sides are
    L2-normalised here, so unnormalised bank means are fine.
    """
    check_ndim("features", feats, 2, "(N, d)")
    protos = prototypes.unsqueeze(1) if prototypes.ndim == 2 else prototypes
    check_ndim("prototypes", protos, 3, "(C, K, d)")
    check_same("feature dim", feats.shape[1], "prototype dim", protos.shape[2])
    f = F.normalize(feats, dim=-1)
    p = F.normalize(protos.to(f.dtype), dim=-1)
    return torch.einsum("nd,ckd->nck", f, p).mean(dim=-1)


def prototype_similarity_loss(
    fg_feats: Tensor,
    bg_feats: Tensor,
    class_index: Tensor,
    prototypes: Tensor,
    temperature: float = 1.0,
    fg_weight: float = 1.0,
    bg_weight: float = 0.5,
) -> SimilarityLoss:
    """PBIP L_SIM = fg_weight * L_FGS + bg_weight * L_BGS (Eqs. for L_FGS / L_BGS).

    With s_n(l) = mean_k cos(f_n, P[l, k]) (K sub-cluster prototypes averaged) and c = class of
    row n, per row:
      L_FGS = -log( e^{s(c)/t} / (e^{s(c)/t} + sum_{l != c} e^{s(l)/t}) )  on the FG feature,
      L_BGS = -log( A / (A + e^{s(c)/t}) ),  A = mean_{l != c} e^{s(l)/t}  on the BG feature,
    i.e. the foreground must match its own class's prototypes rather than the others', and the
    background (the rest of the image) must match the other classes' prototypes (mean over
    them, the "background prototypes") rather than its own class's. Each term is averaged over
    rows (the reference code sums exponentials over the batch before the log; the per-row mean
    is used here so that rows weigh equally). With a single class L_BGS has no positive and is
    0. t defaults to 1.0 as in the reference implementation. No rows -> zeros with gradient.
    """
    check_positive("temperature", temperature)
    check_ndim("class_index", class_index, 1, "(N,)")
    check_same("fg_feats rows", fg_feats.shape[0], "class_index length", class_index.shape[0])
    check_same("bg_feats rows", bg_feats.shape[0], "class_index length", class_index.shape[0])
    n_classes = prototypes.shape[0]
    if class_index.numel() and (class_index.min() < 0 or class_index.max() >= n_classes):
        raise LossInputError(f"class_index values must be in [0, {n_classes - 1}]")
    zero = zero_like_graph(fg_feats, bg_feats, prototypes)
    if class_index.numel() == 0:
        return SimilarityLoss(total=zero, l_fgs=zero, l_bgs=zero)
    idx = class_index.long()
    fg_logits = class_similarities(fg_feats, prototypes) / temperature  # (N, C)
    l_fgs = F.cross_entropy(fg_logits, idx)  # exactly -log softmax(own class)
    if n_classes < 2:
        logger.debug("single class: L_BGS has no background prototypes and is 0")
        l_bgs = zero
    else:
        bg_logits = class_similarities(bg_feats, prototypes) / temperature
        own = bg_logits.gather(1, idx[:, None]).squeeze(1)
        others = bg_logits.masked_fill(F.one_hot(idx, n_classes).bool(), float("-inf"))
        log_a = torch.logsumexp(others, dim=1) - math.log(n_classes - 1)
        l_bgs = (torch.logaddexp(log_a, own) - log_a).mean()
    total = fg_weight * l_fgs + bg_weight * l_bgs
    return SimilarityLoss(total=total, l_fgs=l_fgs, l_bgs=l_bgs)


def cam_area_regulariser(cams: Tensor) -> Tensor:
    """PBIP reference-code extra term mean(CAM), discouraging over-large CAMs (caller weights it, 5e-4)."""
    if cams.numel() == 0:
        return zero_like_graph(cams)
    return cams.mean()
