"""Frozen image (and text) encoders for the image bank and the prototype losses.

``build_encoder(EncoderSpec(...))`` gives an ``ImageEncoder``: the weight-free ``HEDescriptor``
(offline default), an ``OpenClipEncoder`` (image + text towers) or a ``TimmImageEncoder``.
Every name is imported on first use (torch, open_clip, timm only when needed).
"""

from __future__ import annotations

from protoseg.lazy import lazy_exports

_EXPORTS = {
    "DESCRIPTOR_VERSION": "protoseg.models.encoders.descriptor",
    "EncoderError": "protoseg.models.encoders.errors",
    "EncoderInputError": "protoseg.models.encoders.errors",
    "EncoderKind": "protoseg.models.encoders.spec",
    "EncoderSpec": "protoseg.models.encoders.spec",
    "EncoderWeightsError": "protoseg.models.encoders.errors",
    "HEDescriptor": "protoseg.models.encoders.descriptor",
    "ImageEncoder": "protoseg.models.encoders.base",
    "OpenClipEncoder": "protoseg.models.encoders.openclip",
    "PRETRAINED_SETTING": "protoseg.models.encoders.errors",
    "TextEncoder": "protoseg.models.encoders.base",
    "TimmImageEncoder": "protoseg.models.encoders.timm_encoder",
    "build_encoder": "protoseg.models.encoders.spec",
    "encoder_choice": "protoseg.models.encoders.spec",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
