"""Rebuild the encoder a bank was made with from its ``encoder_id`` (to embed new members consistently)."""

from __future__ import annotations

import re

from protoseg.bank.errors import BankError
from protoseg.models.encoders.base import ImageEncoder
from protoseg.models.encoders.descriptor import DESCRIPTOR_VERSION
from protoseg.models.encoders.spec import EncoderKind, EncoderSpec, build_encoder

_DESCRIPTOR = re.compile(rf"^{re.escape(DESCRIPTOR_VERSION)}(?:@(\d+)px)?$")
_MODEL = re.compile(r"^(open_clip|timm):(?P<name>[^@]+)@(?P<weights>.+)$")


def spec_from_encoder_id(encoder_id: str) -> EncoderSpec:
    """EncoderSpec that reproduces ``encoder_id``; raises ``BankError`` when the id names a local weight
    file (its path is not recorded) or an unknown encoder."""
    m = _DESCRIPTOR.match(encoder_id)
    if m:
        return EncoderSpec(EncoderKind.DESCRIPTOR, input_size=int(m.group(1)) if m.group(1) else None)
    m = _MODEL.match(encoder_id)
    if m:
        kind, name, weights = EncoderKind(m.group(1)), m.group("name"), m.group("weights")
        if weights.startswith("random-seed"):
            return EncoderSpec(kind, model_name=name, pretrained=None)
        if weights.startswith(("file:", "dir:")):
            raise BankError(
                f"the bank's encoder {encoder_id!r} used local weights whose path is not stored; build the "
                "encoder yourself (protoseg.models.encoders.build_encoder) with that file and pass it in"
            )
        return EncoderSpec(kind, model_name=name, pretrained=weights)
    raise BankError(f"unknown bank encoder id {encoder_id!r}; build a matching encoder and pass it in")


def encoder_for_bank(encoder_id: str) -> ImageEncoder:
    """The frozen encoder with the given id (checked after building)."""
    encoder = build_encoder(spec_from_encoder_id(encoder_id))
    if encoder.encoder_id != encoder_id:
        raise BankError(f"rebuilt encoder {encoder.encoder_id!r} does not match the bank's {encoder_id!r}")
    return encoder
