"""Prototype sources (fixed image-bank buffer or learnable parameters), their per-stage projector, and the
PSCL pixel decoder.

Both sources return a (C, K, d) tensor from ``forward()``; ``PrototypeProjector`` maps it to each
backbone stage's width with a Linear-ReLU-Linear MLP and L2-normalises the result (PBIP / LPD).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)


def _check_prototypes(t: torch.Tensor, what: str) -> torch.Tensor:
    if t.dim() != 3:
        raise ValueError(f"{what} must have shape (classes, K, dim), got {tuple(t.shape)}")
    return t.detach().float()


class BankPrototypes(nn.Module):
    """Fixed prototypes from an image bank, stored as a non-trainable buffer of shape (C, K, d)."""

    prototypes: torch.Tensor

    def __init__(self, num_classes: int, k: int, dim: int, prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        self.register_buffer("prototypes", torch.zeros(num_classes, k, dim))
        if prototypes is not None:
            self.set_prototypes(prototypes)
        else:
            logger.debug("BankPrototypes: zero buffer (C=%d, K=%d, d=%d) until a bank is set", num_classes, k, dim)

    @classmethod
    def from_tensor(cls, prototypes: torch.Tensor) -> BankPrototypes:
        """Wrap a (C, K, d) tensor of bank prototypes."""
        p = _check_prototypes(prototypes, "bank prototypes")
        return cls(p.shape[0], p.shape[1], p.shape[2], p)

    def set_prototypes(self, prototypes: torch.Tensor) -> None:
        """Replace the bank (e.g. after curation); the shape must stay (C, K, d)."""
        p = _check_prototypes(prototypes, "bank prototypes")
        if p.shape != self.prototypes.shape:
            raise ValueError(
                f"bank prototypes have shape {tuple(p.shape)}, the model expects "
                f"{tuple(self.prototypes.shape)} (classes, K, dim); rebuild the model with matching "
                "num_classes/k/proto_dim"
            )
        self.prototypes.copy_(p.to(self.prototypes.device))

    def forward(self) -> torch.Tensor:
        return self.prototypes


class LearnablePrototypes(nn.Module):
    """Learnable prototypes (C, k, d), initialised random normal or from a given tensor (LPD)."""

    def __init__(self, num_classes: int, k: int, dim: int, init: torch.Tensor | None = None, std: float = 1.0) -> None:
        super().__init__()
        self.prototypes = nn.Parameter(torch.randn(num_classes, k, dim) * std)
        if init is not None:
            self.initialise_from(init)

    @torch.no_grad()
    def initialise_from(self, init: torch.Tensor) -> None:
        """Copy (C, k', d) prototypes; when k' < k the bank is tiled and the copies jittered."""
        p = _check_prototypes(init, "initial prototypes").to(self.prototypes.device)
        c, k, d = self.prototypes.shape
        if p.shape[0] != c or p.shape[2] != d or p.shape[1] > k:
            raise ValueError(
                f"initial prototypes have shape {tuple(p.shape)}; need ({c}, <= {k}, {d}) (classes, sub-clusters, dim)"
            )
        reps = -(-k // p.shape[1])
        tiled = p.repeat(1, reps, 1)[:, :k].clone()
        if p.shape[1] < k:
            scale = 0.01 * p.std().clamp_min(1e-6)
            tiled[:, p.shape[1] :] += torch.randn_like(tiled[:, p.shape[1] :]) * scale
        self.prototypes.copy_(tiled)

    def forward(self) -> torch.Tensor:
        return self.prototypes


class PrototypeProjector(nn.Module):
    """Per stage i an MLP Linear(d, h)-ReLU-Linear(h, c_i); outputs are L2-normalised over c_i."""

    def __init__(self, in_dim: int, hidden: int, out_dims: Sequence[int]) -> None:
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c)) for c in out_dims
        )

    def forward(self, prototypes: torch.Tensor) -> list[torch.Tensor]:
        """(C, K, d) -> list over stages of (C, K, c_i), unit norm along the last axis."""
        return [F.normalize(mlp(prototypes), dim=-1) for mlp in self.mlps]


class FpnPixelDecoder(nn.Module):
    """Light FPN pixel decoder (PSCL): 1x1 laterals on the last three stages (strides 8/16/32 or 8/16/16),
    top-down upsample-and-add, a 3x3 conv + BN + ReLU and a 1x1 projection; output at the finest of them.

    The PSCL thesis contrasts the output of a Mask2Former pixel decoder; this is the small FPN stand-in
    the issue allows, so the contrastive gradients reach stages 2-4, the features the CAMs come from.
    """

    def __init__(self, in_channels: Sequence[int], dim: int) -> None:
        super().__init__()
        if len(in_channels) < 1 or dim < 1:
            raise ValueError(f"FpnPixelDecoder needs >= 1 input stage and dim >= 1, got {in_channels}, {dim}")
        self.lateral = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.smooth = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.project = nn.Conv2d(dim, dim, kernel_size=1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stage maps, finest first (B, c_i, h_i, w_i) -> (B, dim, h_0, w_0)."""
        if len(feats) != len(self.lateral):
            raise ValueError(f"FpnPixelDecoder expects {len(self.lateral)} feature maps, got {len(feats)}")
        out = self.lateral[-1](feats[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(feats[:-1])):
            out = lateral(f) + F.interpolate(out, size=f.shape[-2:], mode="bilinear", align_corners=False)
        return self.project(self.smooth(out))
