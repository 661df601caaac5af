"""protoseg.models: backbones, prototype heads, stage-1 ClassNet, stage-2 SegNet, model factory.

Names are resolved lazily so that ``import protoseg.models`` does not import torch/timm.
"""

from __future__ import annotations

from protoseg.lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, {name: f"{__name__}.{module}" for name, module in _EXPORTS.items()})


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
