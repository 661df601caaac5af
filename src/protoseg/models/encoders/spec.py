"""Encoder choice as a frozen value object, and the factory that builds it."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING

from protoseg.models.encoders.errors import PRETRAINED_SETTING, EncoderError

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
        if (
            self.kind is not EncoderKind.DESCRIPTOR
            and not self.model_name
            and not str(self.pretrained or "").startswith("hf-hub:")
        ):
            raise EncoderError(f"encoder kind {self.kind.value!r} needs a model_name (e.g. 'ViT-B-32' or 'resnet50')")
        if self.input_size is not None and int(self.input_size) <= 0:
            raise EncoderError(f"encoder input_size must be positive, got {self.input_size}")


_DEFAULT_NAMES = {EncoderKind.OPEN_CLIP: "ViT-B-32", EncoderKind.TIMM: "resnet50"}


def build_encoder(spec: EncoderSpec | None = None, setting: str = PRETRAINED_SETTING) -> ImageEncoder:
    """Build the frozen encoder described by ``spec`` (default: the weight-free ``HEDescriptor``)."""
    spec = spec or EncoderSpec()
    if spec.kind is EncoderKind.DESCRIPTOR:
        from protoseg.models.encoders.descriptor import DEFAULT_INPUT_SIZE, HEDescriptor

        return HEDescriptor(input_size=spec.input_size or DEFAULT_INPUT_SIZE)
    hub_id = spec.pretrained if str(spec.pretrained or "").startswith("hf-hub:") else None
    name = spec.model_name or hub_id or _DEFAULT_NAMES[spec.kind]
    if spec.kind is EncoderKind.OPEN_CLIP:
        from protoseg.models.encoders.openclip import OpenClipEncoder

        return OpenClipEncoder(name, spec.pretrained, input_size=spec.input_size, setting=setting)
    from protoseg.models.encoders.timm_encoder import TimmImageEncoder

    return TimmImageEncoder(name, spec.pretrained, input_size=spec.input_size, setting=setting)
