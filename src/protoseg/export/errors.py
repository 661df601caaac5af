"""Exceptions of protoseg.export."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class ExportError(ProtosegError):
    """An export cannot be made as asked (unknown mpp, bad input, unwritable path)."""
