"""Exceptions of protoseg.infer; all derive from ProtosegError so the CLI reports them in one line."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class InferenceError(ProtosegError):
    """Prediction cannot run as asked (bad model output, missing mpp, bad tiling parameters)."""


class MissingMppError(InferenceError):
    """The slide has no microns-per-pixel metadata and none was given."""


class OutputError(ProtosegError):
    """The output folder cannot be written, holds foreign content, or belongs to another run."""
