"""Build models from plain dicts and back, so a checkpoint can rebuild its network.

The dict is ``{"kind": "classnet" | "segnet", **config fields}`` with only YAML/JSON-friendly
values (str, int, float, bool, None, lists).
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any

from torch import nn

from protoseg.errors import ProtosegError
from protoseg.models.classnet import ClassNet, ClassNetConfig
from protoseg.models.segnet import SegNet, SegNetConfig


class ModelConfigError(ProtosegError):
    """A model config dict is malformed (unknown kind or unknown/invalid fields)."""


class ModelKind(str, enum.Enum):
    """Network families the factory can build."""

    CLASSNET = "classnet"
    SEGNET = "segnet"


_CONFIGS: dict[ModelKind, type] = {ModelKind.CLASSNET: ClassNetConfig, ModelKind.SEGNET: SegNetConfig}
_MODELS: dict[ModelKind, type] = {ModelKind.CLASSNET: ClassNet, ModelKind.SEGNET: SegNet}


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


#: Fields older checkpoints carry that the current configs dropped (ignored when rebuilding).
_LEGACY_FIELDS: dict[ModelKind, tuple[str, ...]] = {ModelKind.CLASSNET: ("background_score",)}


def config_from_dict(config: dict[str, Any]) -> ClassNetConfig | SegNetConfig:
    """Parse ``{"kind": ..., **fields}`` into the matching frozen config dataclass."""
    fields = dict(config)
    raw_kind = fields.pop("kind", None)
    try:
        kind = ModelKind(raw_kind)
    except ValueError:
        raise ModelConfigError(
            f"model config needs 'kind' set to one of {[k.value for k in ModelKind]}, got {raw_kind!r}"
        ) from None
    cls = _CONFIGS[kind]
    for legacy in _LEGACY_FIELDS.get(kind, ()):  # written by older versions; no longer has an effect
        fields.pop(legacy, None)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ModelConfigError(f"unknown {kind.value} config fields {unknown}; valid fields: {sorted(known)}")
    try:
        return cls(**fields)
    except (TypeError, ValueError) as exc:
        raise ModelConfigError(f"invalid {kind.value} config: {exc}") from exc


def build_model(config: dict[str, Any], **kwargs: Any) -> nn.Module:
    """Build a ClassNet or SegNet from a plain dict; ``kwargs`` go to the model (e.g. prototypes)."""
    cfg = config_from_dict(config)
    kind = ModelKind.CLASSNET if isinstance(cfg, ClassNetConfig) else ModelKind.SEGNET
    return _MODELS[kind](cfg, **kwargs)


def model_config(model: nn.Module, keep_weights: bool = False) -> dict[str, Any]:
    """Plain dict that ``build_model`` turns back into the same architecture.

    ``weights`` is reset to None unless ``keep_weights``: the checkpoint carries the weights, and
    a rebuild must not need the hub or the original weights file.
    """
    kind = next((k for k, cls in _MODELS.items() if isinstance(model, cls)), None)
    if kind is None:
        raise ModelConfigError(f"model_config supports ClassNet and SegNet, got {type(model).__name__}")
    out: dict[str, Any] = {"kind": kind.value}
    for f in dataclasses.fields(model.config):
        out[f.name] = _plain(getattr(model.config, f.name))
    if not keep_weights:
        out["weights"] = None
    return out
