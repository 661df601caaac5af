"""Base exception of the package: every protoseg error derives from it so callers can catch one type."""

from __future__ import annotations


class ProtosegError(Exception):
    """Base class for errors raised by protoseg; messages say what was expected and what to do."""
