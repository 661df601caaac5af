"""protoseg.models: backbones, prototype heads, stage-1 ClassNet, stage-2 SegNet, model factory.

Names are resolved lazily so that ``import protoseg.models`` does not import torch/timm.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "Backbone": "backbone",
    "BackboneError": "backbone",
    "WeightsError": "backbone",
    "build_backbone": "backbone",
    "load_backbone_weights": "backbone",
    "WeightsInfo": "backbone",
    "WeightsKind": "backbone",
    "planned_weights": "backbone",
    "BankPrototypes": "heads",
    "LearnablePrototypes": "heads",
    "PrototypeProjector": "heads",
    "ClassNet": "classnet",
    "ClassNetConfig": "classnet",
    "ClassNetOutput": "classnet",
    "HeadKind": "classnet",
    "MergeKind": "classnet",
    "cosine_maps": "classnet",
    "merge_subclusters": "classnet",
    "SegNet": "segnet",
    "SegNetConfig": "segnet",
    "ModelConfigError": "factory",
    "ModelKind": "factory",
    "build_model": "factory",
    "model_config": "factory",
    "config_from_dict": "factory",
    # image/text encoders live in protoseg.models.encoders (separate module)
    "build_encoder": "encoders",
    "EncoderSpec": "encoders",
    "ImageEncoder": "encoders",
    "TextEncoder": "encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'protoseg.models' has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
