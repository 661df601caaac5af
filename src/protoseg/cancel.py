"""One cancellation model for every long job: a ``CancelToken`` the user sets, ``Cancelled`` when it is
honoured, and the ``Progress`` callback shape (done, total) that training, whole-slide prediction, bank
builds and the overlay scheduler all report through.

``Cancelled`` means *the user asked to stop* and nothing else: failures (an empty dataset, a NaN loss,
a damaged file) raise their own errors so that callers never report a crash as "cancelled".
"""

from __future__ import annotations

import threading
from typing import Protocol, runtime_checkable

from protoseg.errors import ProtosegError


class Cancelled(ProtosegError):
    """A job stopped because its ``CancelToken`` was set; finished work (checkpoints, chunks) is kept."""


@runtime_checkable
class CancelLike(Protocol):
    """Anything with a ``cancelled`` flag (a ``CancelToken``, or a GUI worker handle)."""

    @property
    def cancelled(self) -> bool: ...


class CancelToken:
    """Thread-safe cancel flag shared between a GUI/CLI and a running job."""

    def __init__(self, event: threading.Event | None = None) -> None:
        # any object with set()/is_set() will do: a ``multiprocessing`` Event lets a parent cancel a child
        self._event = event if event is not None else threading.Event()

    def cancel(self) -> None:
        """Ask the job to stop at its next check."""
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def raise_if_cancelled(self, what: str = "the job") -> None:
        """Raise ``Cancelled`` (naming ``what``) once the token is set."""
        if self._event.is_set():
            raise Cancelled(f"{what} was cancelled")


def check_cancelled(cancel: CancelLike | None, what: str = "the job") -> None:
    """Raise ``Cancelled`` when ``cancel`` (a token or anything with ``.cancelled``) is set; None never is."""
    if cancel is not None and cancel.cancelled:
        raise Cancelled(f"{what} was cancelled")


class Progress(Protocol):
    """Progress callback: ``done`` units of ``total`` finished (total 0 = unknown)."""

    def __call__(self, done: int, total: int) -> object: ...
