"""Exceptions of protoseg.corrections (one-line messages: the CLI prints them as they are)."""

from __future__ import annotations

from protoseg.errors import ProtosegError


class CorrectionsError(ProtosegError):
    """A corrections store is missing, foreign, damaged, or does not match the slide / model it is used with."""
