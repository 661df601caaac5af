"""Exceptions of protoseg.train: failures of a run (never used for a user's cancel, see ``protoseg.cancel``)."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class TrainingError(ProtosegError):
    """Training cannot go on: empty dataset, non-finite loss, mismatched resume state."""
