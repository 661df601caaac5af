"""Hierarchical timm backbones returning four NCHW feature maps at strides 4, 8, 16 and 32.

Weights come from the timm hub (``weights="hub"``), a local file (``weights="/path.pth"``) or
random init (``weights=None``), so training and tests work offline.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from protoseg.errors import ProtosegError

logger = logging.getLogger(__name__)

#: Strides every backbone must expose, one feature map per stage.
EXPECTED_REDUCTIONS: tuple[int, ...] = (4, 8, 16, 32)
#: Prefixes that wrappers (DDP, Lightning, our own modules) put in front of parameter names.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "backbone.", "encoder.", "state_dict.")
#: Names of classifier heads in timm models; their keys are dropped from local checkpoints.
_HEAD_PREFIXES: tuple[str, ...] = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")


class WeightsError(ProtosegError):
    """Model weights could not be obtained or loaded (hub unreachable, bad or missing file)."""


class BackboneError(ProtosegError):
    """The requested timm model cannot serve as a four-stage hierarchical backbone."""


class Backbone(nn.Module):
    """A timm ``features_only`` model whose forward returns 4 NCHW maps (strides 4/8/16/32)."""

    def __init__(self, model: nn.Module, name: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        info = model.feature_info
        self.channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.reductions: tuple[int, ...] = tuple(int(r) for r in info.reduction())
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last_output: bool = str(getattr(fmt, "value", fmt)).upper() == "NHWC"

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return [f.contiguous() for f in feats]


def build_backbone(
    name: str = "pvt_v2_b1",
    weights: str | None = None,
    in_chans: int = 3,
    **timm_kwargs: Any,
) -> Backbone:
    """Create a four-stage backbone; ``weights`` is None (random), ``"hub"`` or a local file path.

    Extra keyword arguments go to ``timm.create_model`` (e.g. ``img_size`` for Swin).
    """
    import timm

    pretrained = weights == "hub"
    kwargs = dict(features_only=True, out_indices=(-4, -3, -2, -1), in_chans=in_chans, **timm_kwargs)
    try:
        model = timm.create_model(name, pretrained=pretrained, **kwargs)
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        if "Unknown model" in str(exc):
            raise BackboneError(
                f"unknown timm model {name!r} for model.backbone; pick a hierarchical model such "
                "as 'pvt_v2_b1', 'resnet50', 'convnext_tiny' or 'swin_tiny_patch4_window7_224'"
            ) from exc
        if pretrained:
            raise _hub_error(name, exc) from exc
        raise
    except Exception as exc:  # network / hub failures come as many exception types
        if pretrained:
            raise _hub_error(name, exc) from exc
        raise
    backbone = Backbone(model, name)
    if backbone.reductions != EXPECTED_REDUCTIONS:
        raise BackboneError(
            f"timm model {name!r} gives feature strides {backbone.reductions}, protoseg needs "
            f"{EXPECTED_REDUCTIONS}; choose a hierarchical backbone (pvt_v2, resnet, convnext, swin)"
        )
    if weights is None:
        logger.info(
            "backbone %s: random init; set model.weights to 'hub' or a local file for pretrained",
            name,
        )
    elif pretrained:
        logger.info("backbone %s: pretrained weights from the timm hub", name)
    else:
        load_backbone_weights(backbone, weights)
    return backbone


def _hub_error(name: str, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"could not get pretrained weights for {name!r} from the timm hub ({type(exc).__name__}: "
        f"{exc}); set model.weights to a local weights file (.safetensors/.pth) or to null for "
        "random init"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or torch file (``weights_only=True``), unwrapping
    ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; set model.weights to an existing local file, "
            "'hub' for timm pretrained weights, or null for random init"
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"could not read weights file {path} ({type(exc).__name__}: {exc}); model.weights "
            "must be a safetensors file or a torch state dict saved with torch.save"
        ) from exc
    for key in ("state_dict", "model", "model_state_dict", "weights"):
        inner = obj.get(key) if isinstance(obj, Mapping) else None
        if isinstance(inner, Mapping) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            obj = inner
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path} does not hold a state dict (got {type(obj).__name__}); fix model.weights")
    return {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _match_keys(state: dict[str, torch.Tensor], own: set[str]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes until the keys line up with ``own`` (the timm model's names)."""
    best = state
    for _ in range(3):
        if len(own & best.keys()) > 0:
            return best
        for prefix in _WRAPPER_PREFIXES:
            if any(k.startswith(prefix) for k in best):
                best = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in best.items()}
                break
        else:
            return best
    return best


def load_backbone_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a local state dict into ``backbone`` (non-strict), logging missing/unexpected keys."""
    state = read_state_dict(path)
    own = backbone.model.state_dict()
    state = _match_keys(state, set(own))
    head = [k for k in state if k.startswith(_HEAD_PREFIXES) and k not in own]
    state = {k: v for k, v in state.items() if k not in head}
    overlap = own.keys() & state.keys()
    if not overlap:
        raise WeightsError(
            f"{path} has no parameters of backbone {backbone.name!r} (first keys: "
            f"{list(state)[:3]}); set model.weights to weights of that timm architecture"
        )
    bad = [k for k in overlap if tuple(state[k].shape) != tuple(own[k].shape)]
    if bad:
        raise WeightsError(
            f"{path}: {len(bad)} tensors have the wrong shape for {backbone.name!r} (e.g. {bad[0]}: "
            f"{tuple(state[bad[0]].shape)} vs {tuple(own[bad[0]].shape)}); model.weights must match "
            "model.backbone"
        )
    result = backbone.model.load_state_dict(state, strict=False)
    logger.info(
        "backbone %s: loaded %d tensors from %s (%d missing, %d unexpected, %d classifier keys dropped)%s%s",
        backbone.name,
        len(overlap),
        path,
        len(result.missing_keys),
        len(result.unexpected_keys),
        len(head),
        f"; missing e.g. {result.missing_keys[:3]}" if result.missing_keys else "",
        f"; unexpected e.g. {result.unexpected_keys[:3]}" if result.unexpected_keys else "",
    )
