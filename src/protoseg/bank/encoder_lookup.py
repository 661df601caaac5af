"""Rebuild the encoder a bank was made with, at the input size recorded in the bank (any training patch size)."""

from __future__ import annotations

import dataclasses
import re

from protoseg.bank.core import ImageBank
from protoseg.bank.errors import BankError
from protoseg.models.encoders.base import ImageEncoder
from protoseg.models.encoders.descriptor import DESCRIPTOR_VERSION
from protoseg.models.encoders.spec import EncoderKind, EncoderSpec, build_encoder

_DESCRIPTOR = re.compile(rf"^{re.escape(DESCRIPTOR_VERSION)}(?:@(\d+)px)?$")
_MODEL = re.compile(r"^(open_clip|timm):(?P<name>[^@]+)@(?P<weights>.+)$")


def _local_weights(encoder_id: str) -> bool:
    m = _MODEL.match(encoder_id)
    return bool(m) and m.group("weights").startswith(("file:", "dir:"))


def spec_from_encoder_id(encoder_id: str, input_size: int | None = None) -> EncoderSpec:
    """EncoderSpec that reproduces ``encoder_id`` (at ``input_size`` when given); raises ``BankError`` when
    the id names a local weight file (its path is not recorded) or an unknown encoder."""
    m = _DESCRIPTOR.match(encoder_id)
    if m:
        size = int(m.group(1)) if m.group(1) else None
        return EncoderSpec(EncoderKind.DESCRIPTOR, input_size=size or input_size)
    m = _MODEL.match(encoder_id)
    if m:
        kind, name, weights = EncoderKind(m.group(1)), m.group("name"), m.group("weights")
        if weights.startswith("random-seed"):
            return EncoderSpec(kind, model_name=name, pretrained=None, input_size=input_size)
        if weights.startswith(("file:", "dir:")):
            raise BankError(
                f"the bank's encoder {encoder_id!r} used local weights whose path is not stored; set "
                "bank.encoder.pretrained to that weight file (or build the encoder with "
                "protoseg.models.encoders.build_encoder and pass it in)"
            )
        return EncoderSpec(kind, model_name=name, pretrained=weights, input_size=input_size)
    raise BankError(f"unknown bank encoder id {encoder_id!r}; build a matching encoder and pass it in")


def encoder_for_bank(bank: ImageBank | str, weights_from: EncoderSpec | None = None) -> ImageEncoder:
    """The frozen encoder a bank (or an ``encoder_id``) was built with, at the bank's recorded input size.

    Crops of any size are resized to that size by the encoder, so a bank trains with any patch size.
    ``weights_from`` supplies the weight file of a bank built from local weights (its path is not stored);
    the rebuilt encoder's id (and recorded input size) must match the bank's.
    """
    encoder_id = bank if isinstance(bank, str) else bank.encoder_id
    size = None if isinstance(bank, str) else bank.encoder_input_size
    if _local_weights(encoder_id) and weights_from is not None and weights_from.pretrained:
        spec = dataclasses.replace(weights_from, input_size=size)
    else:
        spec = spec_from_encoder_id(encoder_id, size)
    encoder = build_encoder(spec)
    if encoder.encoder_id != encoder_id:
        hint = (
            "; set bank.encoder.pretrained to the weights the bank was built with" if _local_weights(encoder_id) else ""
        )
        raise BankError(f"rebuilt encoder {encoder.encoder_id!r} does not match the bank's {encoder_id!r}{hint}")
    if size is not None and int(encoder.input_size) != size:
        raise BankError(
            f"rebuilt encoder {encoder_id!r} takes {encoder.input_size} px images but the bank was built at {size} px"
        )
    return encoder
