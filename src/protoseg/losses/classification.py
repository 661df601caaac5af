"""Multi-stage multi-label classification loss L_CLS of the stage-1 ClassNet.

PBIP (Tang et al., CVPR 2025), Eq. for L_CLS: the sum over backbone stages of the multi-label
soft-margin loss between the stage's image logits (GAP of its class map) and the image label.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor

from protoseg.losses._common import LossInputError, as_tuple, check_ndim, zero_like_graph

logger = logging.getLogger(__name__)

#: Stage weights of PBIP's reference configuration (stages 1..4).
DEFAULT_STAGE_WEIGHTS: tuple[float, ...] = (0.0, 0.1, 1.0, 1.0)


def multilabel_soft_margin(logits: Tensor, labels: Tensor) -> Tensor:
    """Multi-label soft-margin loss = BCE-with-logits averaged over classes and images."""
    check_ndim("logits", logits, 2, "(B, C)")
    if labels.shape != logits.shape:
        raise LossInputError(f"labels must have the logits' shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    if logits.numel() == 0:
        return zero_like_graph(logits)
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="mean")


def multistage_classification_loss(
    logits: Sequence[Tensor],
    labels: Tensor,
    weights: Sequence[float] = DEFAULT_STAGE_WEIGHTS,
) -> Tensor:
    """PBIP L_CLS = sum_i w_i * MLSM(logits_i, labels); stages with weight 0 are not evaluated.

    ``logits`` is one (B, C) tensor per stage, ``labels`` the (B, C) multi-hot image labels and
    ``weights`` one weight per stage (default 0, 0.1, 1, 1).
    """
    w = as_tuple(weights)
    if len(logits) != len(w):
        raise LossInputError(f"got {len(logits)} stage logits but {len(w)} stage weights; pass one weight per stage")
    if len(logits) == 0:
        raise LossInputError("multistage_classification_loss needs at least one stage of logits")
    total: Tensor | None = None
    for stage_logits, weight in zip(logits, w):
        if weight == 0.0:
            continue
        term = weight * multilabel_soft_margin(stage_logits, labels)
        total = term if total is None else total + term
    if total is None:
        logger.debug("all stage weights are 0; classification loss is 0")
        return zero_like_graph(*logits)
    return total
