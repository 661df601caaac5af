"""Weights of open_clip / timm encoders: the torch-free classification lives in ``sources``; here the error
raised when a library failed to load them, and the seeded random init."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from protoseg.models.encoders.errors import PRETRAINED_SETTING, EncoderWeightsError
from protoseg.models.encoders.sources import (
    RANDOM_INIT_SEED,
    WEIGHTS_ELSEWHERE,
    WeightKind,
    WeightSource,
    cached_snapshot,
    hub_missing_error,
    offline_hub_folder,
    one_line,
    resolve_weights,
)

__all__ = [
    "PRETRAINED_SETTING",
    "RANDOM_INIT_SEED",
    "WeightKind",
    "WeightSource",
    "offline_hub_folder",
    "resolve_weights",
    "seeded_init",
    "weights_error",
]


def weights_error(
    model_name: str, source: WeightSource, cause: BaseException, setting: str = PRETRAINED_SETTING
) -> EncoderWeightsError:
    """Build the error raised when a library failed to fetch or load the weights (one line)."""
    if source.kind is WeightKind.HF_HUB and cached_snapshot(str(source.value)) is None:
        return hub_missing_error(str(source.value), f"the download failed ({one_line(cause)})", setting)
    where = {
        WeightKind.TAG: "hub tag",
        WeightKind.HF_HUB: "Hugging Face hub id",
        WeightKind.FILE: "local file",
        WeightKind.DIRECTORY: "local folder",
        WeightKind.RANDOM: "random init",
    }[source.kind]
    return EncoderWeightsError(
        f"could not load weights for encoder {model_name!r} from {where} {source.value!r}: {one_line(cause)}. "
        "Check that the weights match the model architecture (model name); without network access, download "
        f"them elsewhere and set `{setting}` ({WEIGHTS_ELSEWHERE}) to the local checkpoint file or model folder "
        "(e.g. /data/weights/model.pt)"
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
