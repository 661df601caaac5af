"""Encoder errors, importable without torch (configuration checks raise them before any model exists)."""

from __future__ import annotations

from protoseg.errors import ProtosegError

#: Configuration key users set to choose the bank encoder's weights (named in error messages).
PRETRAINED_SETTING = "bank.encoder.pretrained"


class EncoderError(ProtosegError):
    """Base class of encoder errors."""


class EncoderWeightsError(EncoderError):
    """Encoder weights could not be found, downloaded or loaded."""


class EncoderInputError(EncoderError, ValueError):
    """Images or texts handed to an encoder do not follow the (N, 3, H, W) float [0, 1] convention."""
