"""Where encoder weights come from (hub tag, hf-hub id, local file/folder or seeded random init)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import torch

from protoseg.models.encoders.errors import PRETRAINED_SETTING, EncoderWeightsError

logger = logging.getLogger(__name__)

#: Seed of the random initialisation, so that a random-init encoder gives reproducible embeddings.
RANDOM_INIT_SEED = 0
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".tar", ".npz")


class WeightKind(str, Enum):
    """Kind of weight source."""

    RANDOM = "random"
    FILE = "file"
    DIRECTORY = "directory"
    HF_HUB = "hf-hub"
    TAG = "tag"


@dataclass(frozen=True)
class WeightSource:
    """A resolved ``pretrained`` setting: its kind and the value to hand to the model library."""

    kind: WeightKind
    value: str | None = None

    def id_suffix(self) -> str:
        """Short stable string for encoder ids: tag, hub id, file name + size, or the random seed."""
        if self.kind is WeightKind.RANDOM:
            return f"random-seed{RANDOM_INIT_SEED}"
        if self.kind is WeightKind.FILE:
            p = Path(self.value or "")
            return f"file:{p.name}:{p.stat().st_size}"
        if self.kind is WeightKind.DIRECTORY:
            return f"dir:{Path(self.value or '').name}"
        return str(self.value)


def _looks_like_path(value: str) -> bool:
    return (
        os.sep in value or "/" in value or value.startswith((".", "~")) or value.lower().endswith(_WEIGHT_SUFFIXES)
    ) and not value.startswith("hf-hub:")


def resolve_weights(
    pretrained: str | os.PathLike | None, model_name: str, setting: str = PRETRAINED_SETTING
) -> WeightSource:
    """Classify a ``pretrained`` value; a path that does not exist raises ``EncoderWeightsError`` now."""
    if pretrained is None or str(pretrained).strip() == "":
        return WeightSource(WeightKind.RANDOM)
    value = str(pretrained).strip()
    if value.startswith("hf-hub:"):
        return WeightSource(WeightKind.HF_HUB, value)
    expanded = os.path.expanduser(value)
    if os.path.isfile(expanded):
        return WeightSource(WeightKind.FILE, os.path.abspath(expanded))
    if os.path.isdir(expanded):
        return WeightSource(WeightKind.DIRECTORY, os.path.abspath(expanded))
    if isinstance(pretrained, os.PathLike) or _looks_like_path(value):
        raise EncoderWeightsError(
            f"weights file {value!r} for encoder {model_name!r} does not exist; set `{setting}` to an "
            "existing local checkpoint path (e.g. /data/weights/model.pt), a hub tag, or null for random init"
        )
    return WeightSource(WeightKind.TAG, value)


def weights_error(
    model_name: str, source: WeightSource, cause: BaseException, setting: str = PRETRAINED_SETTING
) -> EncoderWeightsError:
    """Build the error raised when a library failed to fetch or load the weights."""
    where = {
        WeightKind.TAG: "hub tag",
        WeightKind.HF_HUB: "Hugging Face hub id",
        WeightKind.FILE: "local file",
        WeightKind.DIRECTORY: "local folder",
        WeightKind.RANDOM: "random init",
    }[source.kind]
    return EncoderWeightsError(
        f"could not load weights for encoder {model_name!r} from {where} {source.value!r}: "
        f"{type(cause).__name__}: {str(cause).rstrip('. ')}. Without network access, download the weights "
        "elsewhere and set "
        f"`{setting}` to the local checkpoint path (e.g. /data/weights/model.pt); check that the file "
        "matches the model architecture."
    )


@contextlib.contextmanager
def seeded_init(enabled: bool) -> Iterator[None]:
    """Seed torch's CPU generator while a model is created at random, without disturbing the caller's RNG."""
    if not enabled:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        yield
