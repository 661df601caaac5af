"""Hierarchical timm backbones returning four NCHW feature maps (strides 4, 8, 16 and 32 or 16).

Weights (``model.weights`` / ``stage2.weights``): ``"auto"`` takes timm's ImageNet weights from the
local cache or a download and falls back to random init with one warning; ``"hub"`` insists on them;
a path loads a local file; None (or ``"random"``) is random init. ``hf-hub:org/repo`` backbones: see
``backbone_hub``. ``output_stride=16`` keeps stage 4 at stride 16 (PBIP's MiT strides 4/2/2/1): stride 1
in the last downsample of ``pvt_v2_*``, timm's dilated ``output_stride`` elsewhere. Inside
``weights_from_checkpoint(source)`` (a trained model being rebuilt) a backbone says it takes the
checkpoint's weights instead of logging random init.
"""

from __future__ import annotations

import enum
import logging
import os
import socket
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from protoseg.errors import ProtosegError
from protoseg.models.encoders.sources import HUB_PREFIX, one_line

logger = logging.getLogger(__name__)

#: Strides every backbone must expose, one feature map per stage (stage 4: 32, or 16 with output_stride=16).
EXPECTED_REDUCTIONS: tuple[int, ...] = (4, 8, 16, 32)
#: Supported stage-4 strides.
OUTPUT_STRIDES: tuple[int, ...] = (16, 32)
#: ``weights`` value: ImageNet weights from the cache or a download, else random init with a warning.
AUTO_WEIGHTS = "auto"
#: ``weights`` value: ImageNet weights from the timm hub, an error when they cannot be had.
HUB_WEIGHTS = "hub"
#: ``weights`` values meaning random init (besides None).
RANDOM_WEIGHTS: tuple[str, ...] = ("random", "none", "null", "")
#: Environment variables that forbid downloads for ``weights="auto"`` (tests set PROTOSEG_OFFLINE=1).
OFFLINE_ENV: tuple[str, ...] = ("PROTOSEG_OFFLINE", "HF_HUB_OFFLINE")
#: Seconds to wait when probing whether the weights host is reachable before an ``auto`` download.
PROBE_TIMEOUT_S = 3.0
#: Prefixes that wrappers (DDP, Lightning, our own modules) put in front of parameter names.
_WRAPPER_PREFIXES: tuple[str, ...] = ("module.", "model.", "backbone.", "encoder.", "state_dict.")
#: Names of classifier heads in timm models; their keys are dropped from local checkpoints.
_HEAD_PREFIXES: tuple[str, ...] = ("head.", "fc.", "classifier.", "head_dist.", "last_linear.")
#: File names timm stores on the Hugging Face hub, in the order timm tries them.
HF_FILENAMES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")


#: Checkpoint whose weights the backbones built now will receive (set by ``weights_from_checkpoint``).
_CHECKPOINT_SOURCE: ContextVar[str | None] = ContextVar("protoseg_checkpoint_source", default=None)


@contextmanager
def weights_from_checkpoint(source: str) -> Iterator[None]:
    """Backbones built inside get their weights from checkpoint ``source`` next: they log that, not random init."""
    token = _CHECKPOINT_SOURCE.set(source)
    try:
        yield
    finally:
        _CHECKPOINT_SOURCE.reset(token)


class WeightsError(ProtosegError):
    """Model weights could not be obtained or loaded (hub unreachable, bad or missing file)."""


class BackboneError(ProtosegError):
    """The requested timm model cannot serve as a four-stage hierarchical backbone."""


class WeightsKind(str, enum.Enum):
    """Where a backbone's initial weights came from."""

    RANDOM = "random"  #: random init, asked for (weights=None)
    FALLBACK = "fallback"  #: random init because ``auto`` found no ImageNet weights
    CACHE = "cache"  #: ImageNet weights from the local timm / Hugging Face cache
    DOWNLOAD = "download"  #: ImageNet weights downloaded now
    FILE = "file"  #: a local weights file


@dataclass(frozen=True)
class WeightsInfo:
    """Which initial weights a backbone got; ``describe()`` is the one-line text a GUI shows."""

    kind: WeightsKind
    backbone: str
    source: str = ""  #: cache file, hub id or local file; empty for random init
    architecture: str = ""  #: the timm architecture an ``hf-hub:`` backbone resolved to (its config.json)

    @property
    def pretrained(self) -> bool:
        """True when the backbone starts from trained weights (cache, download or file)."""
        return self.kind in (WeightsKind.CACHE, WeightsKind.DOWNLOAD, WeightsKind.FILE)

    def describe(self) -> str:
        """E.g. "pvt_v2_b1: ImageNet weights (local cache)" or "...: random init (no ImageNet weights found)"."""
        pretrained = "hub weights" if self.architecture else "ImageNet weights"
        text = {
            WeightsKind.RANDOM: "random init",
            WeightsKind.FALLBACK: f"random init (no {pretrained} found)",
            WeightsKind.CACHE: f"{pretrained} (local cache)",
            WeightsKind.DOWNLOAD: f"{pretrained} (downloaded)",
            WeightsKind.FILE: f"weights from {Path(self.source).name}",
        }[self.kind]
        return f"{self.backbone}{f' ({self.architecture})' if self.architecture else ''}: {text}"


class Backbone(nn.Module):
    """A timm ``features_only`` model whose forward returns 4 NCHW maps (strides 4/8/16/32 or 4/8/16/16)."""

    def __init__(self, model: nn.Module, name: str, reductions: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        info = model.feature_info
        self.channels: tuple[int, ...] = tuple(int(c) for c in info.channels())
        self.reductions: tuple[int, ...] = reductions or tuple(int(r) for r in info.reduction())
        fmt = getattr(model, "output_fmt", "NCHW")
        self.channels_last_output: bool = str(getattr(fmt, "value", fmt)).upper() == "NHWC"
        self.weights_info = WeightsInfo(WeightsKind.RANDOM, name)

    @property
    def output_stride(self) -> int:
        """Stride of the last feature map (16 or 32)."""
        return self.reductions[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.model(x)
        if self.channels_last_output:
            feats = [f.permute(0, 3, 1, 2) for f in feats]
        return [f.contiguous() for f in feats]


def is_random(weights: str | None) -> bool:
    """True for the settings that mean random init (None, "random", "none")."""
    return weights is None or str(weights).strip().lower() in RANDOM_WEIGHTS


def offline() -> bool:
    """True when an environment variable in OFFLINE_ENV forbids downloads."""
    return any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on") for k in OFFLINE_ENV)


def cached_pretrained_file(name: str) -> Path | None:
    """The ImageNet weights file timm would download for ``name``, when it is already in the local
    Hugging Face hub cache or torch hub cache; None otherwise (never touches the network)."""
    cfg = _pretrained_cfg(name)
    if cfg is None:
        return None
    if cfg.file and Path(cfg.file).is_file():
        return Path(cfg.file)
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = (cfg.hf_hub_filename,) if cfg.hf_hub_filename else HF_FILENAMES
        for filename in names:
            hit = try_to_load_from_cache(repo, filename, revision=revision or None)
            if isinstance(hit, str) and Path(hit).is_file():
                return Path(hit)
    if cfg.url:
        path = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if path.is_file():
            return path
    return None


def hub_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Quick TCP probe of the Hugging Face endpoint, so that ``auto`` does not sit through the hub
    client's retries (about a minute) on a machine without network."""
    from huggingface_hub import constants

    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing; let the download try
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def planned_weights(name: str, weights: str | None) -> WeightsInfo:
    """What ``build_backbone(name, weights)`` will use, without building it or touching the network:
    for ``auto``, CACHE when the weights are cached, DOWNLOAD when a download will be tried (it may still
    fall back), FALLBACK when offline."""
    if name.strip().startswith(HUB_PREFIX):
        from protoseg.models.backbone_hub import planned_hub_weights

        return planned_hub_weights(name, weights)
    if is_random(weights):
        return WeightsInfo(WeightsKind.RANDOM, name)
    if weights in (AUTO_WEIGHTS, HUB_WEIGHTS):
        cached = cached_pretrained_file(name)
        if cached is not None:
            return WeightsInfo(WeightsKind.CACHE, name, str(cached))
        if weights == AUTO_WEIGHTS and offline():
            return WeightsInfo(WeightsKind.FALLBACK, name)
        return WeightsInfo(WeightsKind.DOWNLOAD, name, _hub_id(name))
    return WeightsInfo(WeightsKind.FILE, name, str(weights))


def _pretrained_cfg(name: str) -> Any:
    """timm's pretrained config of ``name`` (``arch`` or ``arch.tag``), None when it has none."""
    import timm

    try:
        return timm.models.get_pretrained_cfg(name)
    except RuntimeError:  # invalid pretrained tag
        return None


def _hub_id(name: str) -> str:
    cfg = _pretrained_cfg(name)
    return (cfg.hf_hub_id or cfg.url or name) if cfg is not None else name


def _weights_hint(name: str) -> str:
    return (
        f"to get ImageNet weights run once with network access (they are cached), or download "
        f"{_hub_id(name)} and set model.weights / stage2.weights to the local .safetensors/.pth file; "
        "set them to null to silence this"
    )


def _create(name: str, pretrained: bool, output_stride: int, kwargs: dict[str, Any], arch: str = "") -> nn.Module:
    """``timm.create_model`` with protoseg's messages; stride 16 via ``output_stride`` except pvt_v2 (``arch``)."""
    import timm

    extra = dict(kwargs)
    if output_stride != 32 and not (arch or name).startswith("pvt_v2"):
        extra["output_stride"] = output_stride
    try:
        return timm.create_model(name, pretrained=pretrained, **extra)
    except TypeError as exc:
        if "output_stride" in str(exc):
            raise BackboneError(
                f"timm model {name!r} cannot run at model.output_stride={output_stride}; set it to 32, "
                "or use a pvt_v2, resnet or convnext backbone for stride 16"
            ) from exc
        raise
    except RuntimeError as exc:  # timm raises RuntimeError for unknown model names
        if "Unknown model" in str(exc):
            raise BackboneError(
                f"unknown timm model {name!r} for model.backbone; pick a hierarchical model such "
                "as 'pvt_v2_b1', 'resnet50', 'convnext_tiny' or 'swin_tiny_patch4_window7_224'"
            ) from exc
        if pretrained:
            raise _hub_error(name, exc) from exc
        raise
    except (BackboneError, WeightsError):
        raise
    except Exception as exc:  # network / hub failures come as many exception types
        if pretrained:
            raise _hub_error(name, exc) from exc
        raise


def _stage4_stride_one(model: nn.Module, name: str) -> None:
    """pvt_v2: stride 1 in the overlapping patch embedding that starts stage 4 (weights unchanged)."""
    stage = getattr(model, "stages_3", None)
    if stage is None and hasattr(model, "stages"):
        stage = model.stages[3]
    proj = getattr(getattr(stage, "downsample", None), "proj", None)
    if not isinstance(proj, nn.Conv2d):
        raise BackboneError(f"cannot set stage-4 stride 16 on {name!r}; set model.output_stride to 32")
    proj.stride = (1, 1)


def build_backbone(
    name: str = "pvt_v2_b1",
    weights: str | None = None,
    in_chans: int = 3,
    output_stride: int = 32,
    **timm_kwargs: Any,
) -> Backbone:
    """Create a four-stage backbone; ``weights`` is None (random), ``"auto"``, ``"hub"`` or a local file.

    ``output_stride`` is the stride of stage 4 (32, or 16 as in PBIP). The result's ``weights_info``
    says which weights it got. Extra keyword arguments go to ``timm.create_model`` (e.g. ``img_size``).
    """
    if output_stride not in OUTPUT_STRIDES:
        raise BackboneError(f"model.output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
    kwargs = dict(features_only=True, out_indices=(-4, -3, -2, -1), in_chans=in_chans, **timm_kwargs)
    target = random_target = arch = name
    if name.strip().startswith(HUB_PREFIX):
        from protoseg.models.backbone_hub import plan_hub_backbone

        plan = plan_hub_backbone(name, weights, from_checkpoint=_CHECKPOINT_SOURCE.get() is not None)
        info, target, random_target, arch = plan.info, plan.timm_name, plan.random_name, plan.model.architecture
    elif (info := planned_weights(name, weights)).kind is WeightsKind.CACHE:
        kwargs["pretrained_cfg_overlay"] = {"file": info.source}
    elif info.kind is WeightsKind.DOWNLOAD and weights == AUTO_WEIGHTS and not hub_reachable():
        info = WeightsInfo(WeightsKind.FALLBACK, name)
    file = str(weights) if info.kind is WeightsKind.FILE else None
    pretrained = info.kind in (WeightsKind.CACHE, WeightsKind.DOWNLOAD)
    try:
        model = _create(target, pretrained, output_stride, kwargs, arch)
    except WeightsError as exc:
        if weights != AUTO_WEIGHTS:
            raise
        logger.debug("auto weights for %s: %s", name, exc)
        kwargs.pop("pretrained_cfg_overlay", None)
        model = _create(random_target, False, output_stride, kwargs, arch)
        info = WeightsInfo(WeightsKind.FALLBACK, name, "", info.architecture)
    expected = (*EXPECTED_REDUCTIONS[:-1], output_stride)
    reductions = None
    if output_stride != 32 and arch.startswith("pvt_v2"):
        _stage4_stride_one(model, name)
        reductions = expected
    backbone, shown = Backbone(model, name, reductions), name if arch == name else f"{name} ({arch})"
    if backbone.reductions != expected:
        raise BackboneError(
            f"timm model {shown!r} gives feature strides {backbone.reductions}, protoseg needs "
            f"{expected}; choose a hierarchical backbone (pvt_v2, resnet, convnext, swin)"
        )
    if file is not None:
        load_backbone_weights(backbone, file)
    backbone.weights_info = info
    checkpoint = _CHECKPOINT_SOURCE.get()
    if checkpoint is not None and info.kind is WeightsKind.RANDOM:
        backbone.weights_info = WeightsInfo(WeightsKind.FILE, name, checkpoint, info.architecture)
        logger.info("backbone %s: weights from the %s", name, checkpoint)
    elif info.kind is WeightsKind.FALLBACK:
        logger.warning("backbone %s: no pretrained weights cached/online, random init (%s)", name, _weights_hint(name))
    elif info.kind is WeightsKind.RANDOM:
        logger.info("backbone %s: random init; set model.weights to 'auto' or a local file for pretrained", name)
    elif pretrained:
        logger.info("backbone %s: %s", name, info.describe())
    return backbone


def _hub_error(name: str, exc: BaseException) -> WeightsError:
    return WeightsError(
        f"could not get pretrained weights for {name!r} from the timm hub ({one_line(exc)}); set model.weights "
        "to 'auto' (falls back to random init), a local weights file "
        "(.safetensors/.pth) or null for random init"
    )


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a safetensors or torch file (``weights_only=True``), unwrapping
    ``{"state_dict": ...}`` / ``{"model": ...}`` containers."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsError(
            f"weights file not found: {path}; set model.weights to an existing local file, "
            "'auto' for timm ImageNet weights when available, or null for random init"
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
