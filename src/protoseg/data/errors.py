"""Exceptions of :mod:`protoseg.data`; all derive from :class:`protoseg.errors.ProtosegError`."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class DataError(ProtosegError):
    """Base class for dataset errors."""


class DatasetLayoutError(DataError):
    """A dataset folder does not have the expected layout (message shows expected vs found)."""


class MaskError(DatasetLayoutError):
    """A mask file cannot be converted to class indices (unknown colour, bad values)."""


class RegionError(DataError):
    """Region annotations or the slides they refer to cannot be used (bad geometry, no mpp)."""
