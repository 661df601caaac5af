"""Module-level jobs for tests/test_child.py (a spawned child imports them by name)."""

from __future__ import annotations

import os
import signal
import time

from protoseg.cancel import CancelToken
from protoseg.errors import ProtosegError


def count(*, report, cancel: CancelToken, n: int) -> int:
    for i in range(n):
        report(i)
    return n * 10


def fail(*, report, cancel: CancelToken) -> None:
    raise ProtosegError("dataset folder /nowhere does not exist: choose a dataset folder")


def bug(*, report, cancel: CancelToken) -> None:
    raise ZeroDivisionError("division by zero")


def die(*, report, cancel: CancelToken) -> None:
    report("about to die")
    os.kill(os.getpid(), signal.SIGKILL)


def wait_for_cancel(*, report, cancel: CancelToken) -> None:
    report("waiting")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        cancel.raise_if_cancelled("the test job")
        time.sleep(0.01)
