"""Stage-2 segmentation network: timm hierarchical encoder + SegFormer-style all-MLP decoder.

Predicts C+1 classes (tissue classes 0..C-1, background C) from [0, 1] images; the model owns its
normalisation (mean/std buffers) like every protoseg network.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from protoseg import cams as cam_ops
from protoseg.models.backbone import WeightsInfo, build_backbone
from protoseg.models.classnet import eval_mode
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class SegNetConfig:
    """Everything needed to rebuild a SegNet (weights aside); plain values only."""

    backbone: str = "pvt_v2_b1"
    weights: str | None = None
    num_classes: int = 4
    decoder_dim: int = 256
    dropout: float = 0.1
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    img_size: int | None = None
    output_stride: int = 32  # stage-4 stride (16 or 32)

    def __post_init__(self) -> None:
        for name in ("mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if self.num_classes < 1 or self.decoder_dim < 1:
            raise ValueError(f"num_classes and decoder_dim must be >= 1, got {self.num_classes}, {self.decoder_dim}")


class MLPDecoder(nn.Module):
    """SegFormer head: per-stage 1x1 projection to ``dim``, upsample to stride 4, concat, fuse
    (1x1 conv + BN + ReLU), dropout, 1x1 classifier."""

    def __init__(self, in_channels: tuple[int, ...], dim: int, num_outputs: int, dropout: float) -> None:
        super().__init__()
        self.project = nn.ModuleList(nn.Conv2d(c, dim, kernel_size=1) for c in in_channels)
        self.fuse = nn.Sequential(
            nn.Conv2d(dim * len(in_channels), dim, kernel_size=1, bias=False),
            nn.BatchNorm2d(dim),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout2d(dropout)
        self.classify = nn.Conv2d(dim, num_outputs, kernel_size=1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        size = tuple(feats[0].shape[-2:])
        parts = [cam_ops.resize(proj(f), size) for proj, f in zip(self.project, feats)]
        return self.classify(self.dropout(self.fuse(torch.cat(parts, dim=1))))


class SegNet(nn.Module):
    """Stage-2 network; ``forward`` gives (B, C+1, H, W) logits at the input size."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: SegNetConfig | None = None) -> None:
        super().__init__()
        cfg = config or SegNetConfig()
        self.config = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        extra = {"img_size": cfg.img_size} if cfg.img_size is not None else {}
        self.backbone = build_backbone(cfg.backbone, cfg.weights, output_stride=cfg.output_stride, **extra)
        self.decoder = MLPDecoder(self.backbone.channels, cfg.decoder_dim, cfg.num_classes + 1, cfg.dropout)

    @property
    def weights_info(self) -> WeightsInfo:
        """Which initial backbone weights this network got (``weights_info.describe()`` for display)."""
        return self.backbone.weights_info

    @property
    def num_outputs(self) -> int:
        """C + 1 output channels (tissue classes then background)."""
        return self.config.num_classes + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone((x - self.mean) / self.std)
        return cam_ops.resize(self.decoder(feats), tuple(x.shape[-2:]))

    @torch.no_grad()
    def predict(self, x: torch.Tensor, flip_tta: bool = False) -> torch.Tensor:
        """Eval-mode softmax probabilities (B, C+1, H, W); ``flip_tta`` averages over ``cams.TTA_FLIPS`` (as
        ``Predictor`` with ``tta``)."""

        def probs(inp: torch.Tensor) -> torch.Tensor:
            return torch.softmax(self(inp).float(), dim=1)

        with eval_mode(self):
            return cam_ops.flip_tta(probs, x, cam_ops.TTA_FLIPS) if flip_tta else probs(x)
