"""Built-in weight-free H&E descriptor: the offline default bank encoder (no downloads, deterministic)."""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import Tensor

from protoseg.models.encoders.base import EncoderInputError, ImageEncoder
from protoseg.models.encoders.descriptor_constants import FEATURE_MEAN, FEATURE_STD
from protoseg.models.encoders.he_features import he_features, stain_matrix_inverse

logger = logging.getLogger(__name__)

#: Identifier stored in banks; bump it whenever features or constants change.
DESCRIPTOR_VERSION = "he-descriptor-v1"
DEFAULT_INPUT_SIZE = 224
MIN_INPUT_SIZE = 64


class HEDescriptor(ImageEncoder):
    """Stain-separated colour statistics + multi-scale texture statistics, z-scored and L2-normalised.

    The raw features (``he_features``) are standardised with fixed constants measured on real H&E
    tissue crops (``descriptor_constants``), so every feature weighs about equally in cosine
    similarity. Texture scales are in pixels of the ``input_size`` image, hence the size is part of
    the encoder id when it differs from 224.
    """

    weighted_statistics = True  # every statistic is a spatial mean, so it can weigh pixels

    def __init__(self, input_size: int = DEFAULT_INPUT_SIZE) -> None:
        super().__init__()
        if int(input_size) < MIN_INPUT_SIZE:
            raise EncoderInputError(
                f"HEDescriptor input_size must be at least {MIN_INPUT_SIZE} px (got {input_size}); "
                "its texture filters need room for three pyramid levels"
            )
        self.input_size = int(input_size)
        self.register_buffer("stain_inverse", stain_matrix_inverse(), persistent=False)
        self.register_buffer("feature_mean", torch.tensor(FEATURE_MEAN, dtype=torch.float32), persistent=False)
        self.register_buffer("feature_std", torch.tensor(FEATURE_STD, dtype=torch.float32), persistent=False)
        self.dim = len(FEATURE_MEAN)
        suffix = "" if self.input_size == DEFAULT_INPUT_SIZE else f"@{self.input_size}px"
        self.encoder_id = f"{DESCRIPTOR_VERSION}{suffix}"
        self.freeze()

    def embed(self, images: Tensor) -> Tensor:
        return self._standardised(images, None)

    def embed_weighted(self, images: Tensor, weights: Tensor) -> Tensor:
        """Statistics of the weighted pixels of the whole image: no black fill, no artificial mask edges."""
        return self._standardised(images, weights)

    def _standardised(self, images: Tensor, weights: Tensor | None) -> Tensor:
        dev = images.device.type
        guard = torch.autocast(dev, enabled=False) if dev in ("cpu", "cuda") else contextlib.nullcontext()
        with guard:  # logs, variances and ratios need float32 even inside an AMP region
            w = None if weights is None else weights.float()
            raw = he_features(images.float(), self.stain_inverse, w)
        if raw.shape[1] != self.dim:  # features and constants out of sync: a developer error
            raise RuntimeError(f"he_features returned {raw.shape[1]} features, constants cover {self.dim}")
        return (raw - self.feature_mean) / self.feature_std
