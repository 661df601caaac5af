"""Stage-1 classification network (PBIP ClassNet, LPD learnable prototypes, or a plain CAM head).

Prototype heads: per stage i, M_i(p, n, k) = s_i * cos(F_i(p), P_i(n, k)) with P_i the projected
prototypes and s_i a learnable scale; sub-cluster maps merge to class maps, image logits are the
global average of each class map. The ``cam`` head is a 1x1 conv classifier on the last stage.
"""

from __future__ import annotations

import contextlib
import enum
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from protoseg import cams as cam_ops
from protoseg.cam_norm import CamNorm
from protoseg.models.backbone import WeightsInfo, build_backbone
from protoseg.models.heads import BankPrototypes, FpnPixelDecoder, LearnablePrototypes, PrototypeProjector
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD


class HeadKind(str, enum.Enum):
    """Stage-1 head: plain CAM classifier, fixed image-bank prototypes, or learnable prototypes."""

    CAM = "cam"
    BANK = "bank"
    LEARNABLE = "learnable"


class MergeKind(str, enum.Enum):
    """How sub-cluster maps (B, C, K, h, w) merge into class maps (B, C, h, w)."""

    MEAN = "mean"
    SOFTMAX_MAX = "softmax_max"


@dataclass(frozen=True)
class ClassNetConfig:
    """Everything needed to rebuild a ClassNet (weights aside); plain values only."""

    backbone: str = "pvt_v2_b1"
    weights: str | None = None
    head: HeadKind = HeadKind.BANK
    num_classes: int = 4
    k: int = 3
    proto_dim: int = 512
    projector_hidden: int = 256
    stage_weights: tuple[float, ...] = (0.0, 0.1, 1.0, 1.0)
    fusion_weights: tuple[float, ...] = cam_ops.DEFAULT_FUSION_WEIGHTS
    logit_scale_init: float = 1.0 / 0.07
    learn_scale: bool = True
    score_threshold: float = 0.8
    # per-class label-free gate calibrated on validation images after stage-1 training (None: score_threshold)
    class_thresholds: tuple[float, ...] | None = None
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    img_size: int | None = None
    output_stride: int = 32  # stage-4 stride; 16 as in PBIP (the run config's model.output_stride default)
    pixel_decoder_dim: int = 0  # > 0: an FPN pixel decoder over stages 2-4 gives training embeddings (PSCL)
    # how label-free prediction scales CAMs before the kept classes compete (pseudo-masks: stage1.pseudo)
    free_cams: CamNorm = CamNorm.JOINT

    def __post_init__(self) -> None:
        object.__setattr__(self, "head", HeadKind(self.head))
        object.__setattr__(self, "free_cams", CamNorm(self.free_cams))
        for name in ("stage_weights", "fusion_weights", "mean", "std"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
        if len(self.stage_weights) != 4:
            raise ValueError(f"stage_weights needs 4 values (stages 1..4), got {self.stage_weights}")
        if not 1 <= len(self.fusion_weights) <= 4:
            raise ValueError(f"fusion_weights needs 1..4 values (last stages), got {self.fusion_weights}")
        if len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError("mean and std need 3 values (RGB)")
        if self.pixel_decoder_dim < 0:
            raise ValueError(f"pixel_decoder_dim must be >= 0, got {self.pixel_decoder_dim}")
        if self.num_classes < 1 or self.k < 1:
            raise ValueError(f"num_classes and k must be >= 1, got {self.num_classes}, {self.k}")
        if self.class_thresholds is not None:
            object.__setattr__(self, "class_thresholds", tuple(float(v) for v in self.class_thresholds))
            if len(self.class_thresholds) != self.num_classes or not all(0 <= v <= 1 for v in self.class_thresholds):
                raise ValueError(
                    f"class_thresholds needs {self.num_classes} values in [0, 1], got {self.class_thresholds}"
                )


@dataclass(frozen=True)
class ClassNetOutput:
    """Per-stage outputs; for the ``cam`` head every list has one entry (stage 4)."""

    logits: list[torch.Tensor]
    maps: list[torch.Tensor]
    subcluster_maps: list[torch.Tensor] | None = None
    features: list[torch.Tensor] = field(default_factory=list)
    embeddings: torch.Tensor | None = None  #: pixel-decoder output (training with pixel_decoder_dim > 0)


def cosine_maps(features: torch.Tensor, prototypes: torch.Tensor, scale: torch.Tensor | float) -> torch.Tensor:
    """s * cos(F(p), P(n, k)): features (B, c, h, w), unit prototypes (C, K, c) -> (B, C, K, h, w)."""
    f = F.normalize(features, dim=1)
    return torch.einsum("bchw,nkc->bnkhw", f, prototypes) * scale


def merge_subclusters(maps: torch.Tensor, kind: MergeKind | str = MergeKind.MEAN) -> torch.Tensor:
    """Merge (B, C, K, h, w) -> (B, C, h, w).

    mean:        M(p, n) = (1/K) sum_k M(p, n, k)
    softmax_max: M(p, n) = sum_k w_k M(p, n, k),  w_k = exp(M(p, n, k)) / sum_j exp(M(p, n, j)),
                 a smooth max over sub-clusters (tends to max_k as the scale grows).
    """
    kind = MergeKind(kind)
    if kind is MergeKind.MEAN:
        return maps.mean(dim=2)
    return (torch.softmax(maps, dim=2) * maps).sum(dim=2)


def _rescale(x: torch.Tensor, scale: float) -> torch.Tensor:
    """``x`` resized by ``scale`` (bilinear; antialiased when shrinking)."""
    size = (max(1, round(x.shape[-2] * scale)), max(1, round(x.shape[-1] * scale)))
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[None]:
    """Temporarily put ``module`` in eval mode, restoring its previous mode afterwards."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class ClassNet(nn.Module):
    """Stage-1 network: backbone + prototype (or CAM) head; input images in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, config: ClassNetConfig | None = None, prototypes: torch.Tensor | None = None) -> None:
        super().__init__()
        cfg = config or ClassNetConfig()
        self.config = cfg
        self.register_buffer("mean", torch.tensor(cfg.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(cfg.std).view(1, 3, 1, 1))
        extra = {"img_size": cfg.img_size} if cfg.img_size is not None else {}
        self.backbone = build_backbone(cfg.backbone, cfg.weights, output_stride=cfg.output_stride, **extra)
        channels = self.backbone.channels
        self.pixel_decoder = FpnPixelDecoder(channels[1:], cfg.pixel_decoder_dim) if cfg.pixel_decoder_dim else None
        if cfg.head is HeadKind.CAM:
            if prototypes is not None:
                raise ValueError("the 'cam' head takes no prototypes; use head='bank' or 'learnable'")
            self.classifier = nn.Conv2d(channels[-1], cfg.num_classes, kernel_size=1, bias=False)
            return
        if cfg.head is HeadKind.BANK:
            self.prototypes: nn.Module = BankPrototypes(cfg.num_classes, cfg.k, cfg.proto_dim, prototypes)
        else:
            self.prototypes = LearnablePrototypes(cfg.num_classes, cfg.k, cfg.proto_dim, prototypes)
        self.projector = PrototypeProjector(cfg.proto_dim, cfg.projector_hidden, channels)
        self.logit_scale = nn.Parameter(
            torch.full((len(channels),), float(cfg.logit_scale_init)), requires_grad=cfg.learn_scale
        )

    @property
    def weights_info(self) -> WeightsInfo:
        """Which initial backbone weights this network got (``weights_info.describe()`` for display)."""
        return self.backbone.weights_info

    @property
    def stage_indices(self) -> tuple[int, ...]:
        """Backbone stages (0-based) that the output lists correspond to."""
        return (3,) if self.config.head is HeadKind.CAM else (0, 1, 2, 3)

    @property
    def output_stage_weights(self) -> tuple[float, ...]:
        """Classification-loss weight of each output entry (config.stage_weights of its stage)."""
        return tuple(self.config.stage_weights[i] for i in self.stage_indices)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> normalised network input with the model's own mean/std."""
        return (x - self.mean) / self.std

    def forward(self, x: torch.Tensor, merge: MergeKind | str | None = None) -> ClassNetOutput:
        """Run on [0, 1] images (B, 3, H, W); ``merge`` defaults to mean when training, else
        softmax-weighted max."""
        feats = self.backbone(self.normalize(x))
        emb = self.pixel_decoder(feats[1:]) if self.pixel_decoder is not None and self.training else None
        if self.config.head is HeadKind.CAM:
            cam = self.classifier(feats[-1])
            return ClassNetOutput(logits=[cam.mean(dim=(2, 3))], maps=[cam], features=feats, embeddings=emb)
        kind = MergeKind(merge) if merge is not None else (MergeKind.MEAN if self.training else MergeKind.SOFTMAX_MAX)
        projected = self.projector(self.prototypes())
        sub = [cosine_maps(f, p, self.logit_scale[i]) for i, (f, p) in enumerate(zip(feats, projected))]
        maps = [merge_subclusters(m, kind) for m in sub]
        logits = [m.mean(dim=(2, 3)) for m in maps]
        return ClassNetOutput(logits=logits, maps=maps, subcluster_maps=sub, features=feats, embeddings=emb)

    def forward_multiscale(self, x: torch.Tensor, scales: Sequence[float] = (1.0,)) -> ClassNetOutput:
        """Forward at each input scale (bilinear resize of ``x``) with every stage map brought back to the first
        scale's map size and averaged: multi-scale CAM inference (AffinityNet, PBIP's test time). Logits,
        features and sub-cluster maps are the first scale's; one scale is a plain forward."""
        first = self(x if scales[0] == 1 else _rescale(x, scales[0]))
        if len(scales) == 1:
            return first
        maps = list(first.maps)
        for s in scales[1:]:
            other = self(x if s == 1 else _rescale(x, s))
            for i, m in enumerate(other.maps):
                maps[i] = maps[i] + cam_ops.resize(m, tuple(first.maps[i].shape[-2:]))
        return replace(first, maps=[m / len(scales) for m in maps])

    def fusion_weights(self) -> tuple[float, ...]:
        """Stage fusion weights for CAMs (1.0 for the single-stage CAM head)."""
        return (1.0,) if self.config.head is HeadKind.CAM else self.config.fusion_weights

    def fused_cams(
        self,
        out: ClassNetOutput,
        size: tuple[int, int],
        labels: torch.Tensor | None = None,
        score_gate: bool = False,
        norm: CamNorm | str = CamNorm.PER_CLASS,
    ) -> torch.Tensor:
        """Normalised stage CAMs (``norm``: per-class min-max, or one scale for the gated classes) fused at
        ``size``; label-gated when ``labels`` are given, else gated by ``class_gate`` when ``score_gate``."""
        keep = labels if labels is not None else self.class_gate(out.logits[-1]) if score_gate else None
        stage_cams = [cam_ops.scale_cams(m, norm, keep) for m in out.maps]
        fused = cam_ops.fuse_cams(stage_cams, self.fusion_weights(), size)
        if keep is None:
            return fused
        return cam_ops.label_gate(fused, keep)

    def gate_thresholds(self) -> tuple[float, ...]:
        """Per-class label-free gate: the calibrated ``class_thresholds``, else ``score_threshold`` for all."""
        c = self.config
        return c.class_thresholds if c.class_thresholds is not None else (c.score_threshold,) * c.num_classes

    def set_class_thresholds(self, thresholds: Sequence[float] | None) -> None:
        """Store a calibrated per-class gate in the config (saved with the checkpoint); None = the fixed one."""
        values = None if thresholds is None else tuple(float(v) for v in thresholds)
        self.config = replace(self.config, class_thresholds=values)

    def class_gate(self, logits: torch.Tensor) -> torch.Tensor:
        """(B, C) bool: the classes label-free prediction keeps (the one gate every label-free path uses)."""
        thresholds = torch.tensor(self.gate_thresholds(), dtype=logits.dtype, device=logits.device)
        return cam_ops.gate_classes(cam_ops.class_scores(logits), thresholds)

    def cams(self, x: torch.Tensor, labels: torch.Tensor | None = None, gate: bool = True) -> torch.Tensor:
        """Fused CAMs (B, C, H, W) in [0, 1] at input size, in the current train/eval mode;
        gated by ``labels`` when given, else by ``class_gate`` on the image scores."""
        out = self(x)
        size = tuple(x.shape[-2:])
        return self.fused_cams(out, size, labels if gate else None, score_gate=gate and labels is None)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Label-free stage-1 scores (B, C+1, H, W) built by the pseudo-mask rule: CAMs of the classes
        whose image score passes ``class_gate`` (always at least the top-scoring one: tissue has a
        class), background channel C = 1 only where the glass detector finds glass (never low CAM)."""
        with eval_mode(self):
            out = self(x)
        return self.label_free_scores(out, x)

    def label_free_scores(self, out: ClassNetOutput, x: torch.Tensor) -> torch.Tensor:
        """``predict``'s scores (B, C+1, H, W) from an eval-mode forward ``out`` of the images ``x``."""
        scores = cam_ops.class_scores(out.logits[-1])  # (B, C) sigmoid
        keep = self.class_gate(out.logits[-1])
        fused = self.fused_cams(out, tuple(x.shape[-2:]), labels=keep, norm=self.config.free_cams)  # gate as labels
        # ties (e.g. every CAM 0 at its min-max minimum) go to the kept class with the higher image score
        fused = (fused + 1e-3 * (keep * scores)[:, :, None, None]).clamp(0, 1)
        glass = cam_ops.glass_background(x).to(fused.dtype)[:, None]
        return torch.cat([fused * (1 - glass), glass], dim=1)
