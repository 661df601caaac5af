"""Frozen image (and text) encoders for the image bank and the prototype losses.

``build_encoder(EncoderSpec(...))`` gives an ``ImageEncoder``: the weight-free ``HEDescriptor``
(offline default), an ``OpenClipEncoder`` (image + text towers) or a ``TimmImageEncoder``.
open_clip / timm are imported only when such an encoder is built.
"""

from __future__ import annotations

from protoseg.models.encoders.base import (
    EncoderError,
    EncoderInputError,
    EncoderWeightsError,
    ImageEncoder,
    TextEncoder,
)
from protoseg.models.encoders.descriptor import DESCRIPTOR_VERSION, HEDescriptor
from protoseg.models.encoders.spec import EncoderKind, EncoderSpec, build_encoder
from protoseg.models.encoders.weights import PRETRAINED_SETTING

__all__ = [
    "DESCRIPTOR_VERSION",
    "PRETRAINED_SETTING",
    "EncoderError",
    "EncoderInputError",
    "EncoderKind",
    "EncoderSpec",
    "EncoderWeightsError",
    "HEDescriptor",
    "ImageEncoder",
    "OpenClipEncoder",
    "TextEncoder",
    "TimmImageEncoder",
    "build_encoder",
]


def __getattr__(name: str):  # lazy: keep open_clip / timm modules out of a plain import
    if name == "OpenClipEncoder":
        from protoseg.models.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder
    if name == "TimmImageEncoder":
        from protoseg.models.encoders.timm_encoder import TimmImageEncoder

        return TimmImageEncoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
