"""Exceptions of the image bank package."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class BankError(ProtosegError):
    """Base class of image bank errors (building, curating, computing prototypes)."""


class BankFormatError(BankError):
    """An image bank folder on disk is missing files or does not match the expected format."""


class BankCurationError(BankError, ValueError):
    """A curation request cannot be applied (unknown member ids, pinned member, wrong encoder...)."""
