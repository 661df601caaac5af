"""Encoder choice as a frozen value object, and the factory that builds it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

from protoseg.models.encoders.errors import PRETRAINED_SETTING, EncoderError
from protoseg.models.encoders.sources import HUB_PREFIX, resolve_weights

if TYPE_CHECKING:
    from protoseg.models.encoders.base import ImageEncoder


class EncoderKind(str, Enum):
    """Which family of encoder to build."""

    DESCRIPTOR = "descriptor"
    OPEN_CLIP = "open_clip"
    TIMM = "timm"


@dataclass(frozen=True)
class EncoderSpec:
    """What encoder to build: family, model name, weights (tag / hf-hub id / local path / None) and size.

    ``pretrained=None`` asks for a seeded random init (logged) for open_clip/timm; a hub or file that
    cannot be loaded always raises instead of falling back. ``input_size=None`` = the model's own size.
    """

    kind: EncoderKind = EncoderKind.DESCRIPTOR
    model_name: str = ""
    pretrained: str | None = None
    input_size: int | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "kind", EncoderKind(self.kind))
        except ValueError:
            choices = ", ".join(k.value for k in EncoderKind)
            raise EncoderError(f"unknown encoder kind {self.kind!r}; choose one of: {choices}") from None
        if self.kind is not EncoderKind.DESCRIPTOR and not self.model_name and not _names_model(self.pretrained):
            raise EncoderError(
                f"encoder kind {self.kind.value!r} needs a model_name (e.g. 'ViT-B-32', 'resnet50' or "
                "'hf-hub:org/repo'), or weights that name it (an hf-hub:org/repo id or a model folder)"
            )
        if self.input_size is not None and int(self.input_size) <= 0:
            raise EncoderError(f"encoder input_size must be positive, got {self.input_size}")


_DEFAULT_NAMES = {EncoderKind.OPEN_CLIP: "ViT-B-32", EncoderKind.TIMM: "resnet50"}


def _names_model(pretrained: str | None) -> bool:
    """True when the weights say which model they are: an hf-hub id or a model folder (its config inside)."""
    value = str(pretrained or "").strip()
    return value.startswith(HUB_PREFIX) or (bool(value) and os.path.isdir(os.path.expanduser(value)))


def _default_name(spec: EncoderSpec) -> str:
    """The model name an encoder id records: the given one, else the hub id or folder name of the weights."""
    value = str(spec.pretrained or "").strip()
    if spec.model_name:
        return spec.model_name
    if value.startswith(HUB_PREFIX):
        return value
    if value and os.path.isdir(os.path.expanduser(value)):
        return Path(os.path.expanduser(value)).resolve().name
    return _DEFAULT_NAMES[spec.kind]


def encoder_choice(kind: str, model_name: str = "", weights: str = "") -> EncoderSpec:
    """The encoder a user typed (CLI flags, Image bank dock), checked without loading anything: a kind, a
    model name and weights (an open_clip/timm tag, ``hf-hub:org/repo``, a local file or folder, or empty)."""
    spec = EncoderSpec(kind=kind, model_name=model_name.strip(), pretrained=weights.strip() or None)  # type: ignore[arg-type]
    if spec.kind is EncoderKind.DESCRIPTOR and (spec.model_name or spec.pretrained):
        raise EncoderError(
            "the built-in descriptor takes no model name or weights; choose the encoder open_clip or timm "
            "to use a named model"
        )
    resolve_weights(spec.pretrained, spec.model_name or str(spec.pretrained))  # a missing path fails now
    return spec


def build_encoder(spec: EncoderSpec | None = None, setting: str = PRETRAINED_SETTING) -> ImageEncoder:
    """Build the frozen encoder described by ``spec`` (default: the weight-free ``HEDescriptor``)."""
    spec = spec or EncoderSpec()
    if spec.kind is EncoderKind.DESCRIPTOR:
        from protoseg.models.encoders.descriptor import DEFAULT_INPUT_SIZE, HEDescriptor

        return HEDescriptor(input_size=spec.input_size or DEFAULT_INPUT_SIZE)
    name = _default_name(spec)
    if spec.kind is EncoderKind.OPEN_CLIP:
        from protoseg.models.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder(name, spec.pretrained, input_size=spec.input_size, setting=setting)
    from protoseg.models.encoders.timm_encoder import TimmImageEncoder

    return TimmImageEncoder(name, spec.pretrained, input_size=spec.input_size, setting=setting)
