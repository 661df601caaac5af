"""LPD prototype-diversity regulariser, its warm-up schedule and the pseudo region it uses.

"Learnable Prototype Diversity" for WSSS in histopathology (LPD): a class's k learnable
prototypes should respond to different parts of the class's pseudo region. The penalty is
exp(-Jeffrey divergence) between the prototypes' pixel-similarity distributions (or the squared
off-diagonal correlation of their similarity maps), switched on after a warm-up.
"""

from __future__ import annotations

import enum
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

_EPS = 1e-8


class DiversityKind(str, enum.Enum):
    """Which prototype-diversity penalty to use."""

    JEFFREY = "jeffrey"
    CORRELATION = "correlation"


def _pair_mean(matrix: Tensor) -> Tensor:
    """Mean of the strictly upper-triangular entries of (..., k, k) matrices -> (...)."""
    k = matrix.shape[-1]
    iu = torch.triu_indices(k, k, offset=1, device=matrix.device)
    return matrix[..., iu[0], iu[1]].mean(dim=-1)


def _jeffrey_penalty(sims: Tensor, inside: Tensor, temperature: float) -> Tensor:
    """Per (image, class): mean over prototype pairs of exp(-J(p_i, p_j)); sims (B, C, k, P).

    p_i = softmax of prototype i's similarities over the pixels ``inside`` (B, C, 1, P); uses
    J(i, j) = a_i + a_j - X_ij - X_ji with X_ij = sum_x p_i log p_j and a_i = X_ii.
    """
    logits = (sims / temperature).masked_fill(~inside, float("-inf"))
    log_p = F.log_softmax(logits, dim=-1)
    log_p = torch.where(inside, log_p, torch.zeros_like(log_p))
    p = log_p.exp() * inside
    cross = torch.einsum("bcip,bcjp->bcij", p, log_p)
    self_term = torch.diagonal(cross, dim1=-2, dim2=-1)
    jeffrey = self_term[..., :, None] + self_term[..., None, :] - cross - cross.transpose(-1, -2)
    return _pair_mean(torch.exp(-jeffrey.clamp_min(0.0)))


def _correlation_penalty(sims: Tensor, inside: Tensor) -> Tensor:
    """Per (image, class): mean over prototype pairs of squared Pearson correlation over ``inside``."""
    mask = inside.to(sims.dtype)
    count = mask.sum(dim=-1, keepdim=True).clamp_min(1.0)
    centred = (sims - (sims * mask).sum(dim=-1, keepdim=True) / count) * mask
    normed = centred / (centred.norm(dim=-1, keepdim=True) + _EPS)
    corr = torch.einsum("bcip,bcjp->bcij", normed, normed)
    return _pair_mean(corr**2)


def prototype_diversity_loss(
    sim_maps: Tensor,
    region: Tensor,
    labels: Tensor,
    kind: DiversityKind | str = DiversityKind.JEFFREY,
    temperature: float = 1.0,
) -> Tensor:
    """LPD diversity penalty, averaged over present (image, class) pairs with >= 2 region pixels.

    ``sim_maps`` (B, C, k, h, w) per-prototype similarity maps, ``region`` (B, C, h, w) bool
    pseudo region of each class, ``labels`` (B, C) multi-hot. For each pair the similarities of
    the k prototypes over the region pixels form a (k, P) matrix; JEFFREY turns each row into a
    distribution softmax(sim / temperature) over the pixels (temperature 1.0 as in the LPD code) and
    penalises mean_{i<j} exp(-J(p_i, p_j)) (1 for identical prototypes, -> 0 as they separate); CORRELATION penalises
    mean_{i<j} corr(s_i, s_j)^2. Returns 0 (with gradient) when k < 2 or no pair qualifies.
    """
    check_ndim("sim_maps", sim_maps, 5, "(B, C, k, h, w)")
    check_ndim("region", region, 4, "(B, C, h, w)")
    check_ndim("labels", labels, 2, "(B, C)")
    kind = DiversityKind(kind)
    check_positive("temperature", temperature)
    b, c, k, h, w = sim_maps.shape
    if region.shape != (b, c, h, w):
        raise LossInputError(f"region must have shape {(b, c, h, w)} to match sim_maps, got {tuple(region.shape)}")
    check_same("labels batch size", labels.shape[0], "sim_maps batch size", b)
    check_same("labels classes", labels.shape[1], "sim_maps classes", c)
    inside = region.bool().reshape(b, c, 1, h * w)
    valid = (labels > 0.5) & (inside.sum(dim=(-2, -1)) >= 2)  # (B, C)
    if k < 2 or not bool(valid.any()):
        return zero_like_graph(sim_maps)
    sims = sim_maps.reshape(b, c, k, h * w)
    # pairs with an empty region are dropped below; give them all pixels so no row is all -inf
    inside = inside | ~inside.any(dim=-1, keepdim=True)
    if kind is DiversityKind.JEFFREY:
        per_pair = _jeffrey_penalty(sims, inside, temperature)
    else:
        per_pair = _correlation_penalty(sims, inside)
    return per_pair[valid].mean()


@dataclass(frozen=True)
class DiversityWarmup:
    """LPD schedule: weight 0 before ``warmup_steps``, then ramps linearly to ``weight``.

    ``ramp_steps`` = 0 (default) switches the full weight on at ``warmup_steps``.
    """

    weight: float = 0.5
    warmup_steps: int = 0
    ramp_steps: int = 0

    def __post_init__(self) -> None:
        if self.weight < 0 or self.warmup_steps < 0 or self.ramp_steps < 0:
            raise LossInputError(
                "DiversityWarmup needs weight, warmup_steps and ramp_steps >= 0, got "
                f"{self.weight}, {self.warmup_steps}, {self.ramp_steps}"
            )

    def __call__(self, step: int) -> float:
        """Weight of the diversity term at optimisation step ``step`` (0-based)."""
        if step < self.warmup_steps:
            return 0.0
        if self.ramp_steps == 0:
            return float(self.weight)
        progress = min(1.0, (step - self.warmup_steps + 1) / self.ramp_steps)
        return float(self.weight) * progress


def lpd_pseudo_region(cams: Tensor, background_score: float = 0.2, labels: Tensor | None = None) -> Tensor:
    """LPD pseudo region: one-hot argmax over [constant background_score, CAMs], bool (B, C, H, W).

    Pixels where no CAM exceeds ``background_score`` (ties go to background) belong to no
    class. With ``labels`` (B, C), absent classes never win a pixel.
    """
    check_ndim("cams", cams, 4, "(B, C, H, W)")
    scores = cams.detach()
    if labels is not None:
        check_ndim("labels", labels, 2, "(B, C)")
        if labels.shape != cams.shape[:2]:
            raise LossInputError(f"labels must have shape {tuple(cams.shape[:2])}, got {tuple(labels.shape)}")
        absent = (labels <= 0.5)[:, :, None, None]
        scores = scores.masked_fill(absent, float("-inf"))
    bg = torch.full_like(scores[:, :1], float(background_score))
    winner = torch.cat([bg, scores], dim=1).argmax(dim=1)  # 0 = background
    classes = torch.arange(1, cams.shape[1] + 1, device=cams.device)[None, :, None, None]
    return winner[:, None] == classes
