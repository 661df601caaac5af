"""Exceptions of protoseg.infer; all derive from ProtosegError so the CLI reports them in one line."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class InferenceError(ProtosegError):
    """Prediction cannot run as asked (bad model output, bad tiling parameters).

    A slide without microns-per-pixel raises ``protoseg.slide.MissingMppError`` instead (also a
    ``ProtosegError``; exported here as ``protoseg.infer.MissingMppError`` too).
    """


class OutputError(ProtosegError):
    """The output folder cannot be written, holds foreign content, or belongs to another run."""
