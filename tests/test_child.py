"""Child-process jobs (``protoseg.child``): progress, result, one-line errors, cancel, and a child that dies."""

from __future__ import annotations

import time

import pytest

from protoseg.cancel import Cancelled
from protoseg.child import ChildError, ChildJob, target_name


def _run(job: ChildJob, timeout: float = 60.0, on_item=None) -> list:
    items: list = []
    end = time.monotonic() + timeout
    while job.outcome is None and time.monotonic() < end:
        new = job.poll()
        items.extend(new)
        if new and on_item is not None:
            on_item(new)
        time.sleep(0.02)
    assert job.outcome is not None, "the child job did not end"
    return items


def test_progress_then_result() -> None:
    job = ChildJob("child_jobs:count", n=5).start()
    items = _run(job)
    assert items == [0, 1, 2, 3, 4]
    assert job.outcome == ("done", 50)


def test_a_protoseg_error_arrives_as_its_one_line_message() -> None:
    job = ChildJob("child_jobs:fail").start()
    _run(job)
    kind, exc = job.outcome
    assert kind == "error" and isinstance(exc, ChildError)
    assert str(exc) == "dataset folder /nowhere does not exist: choose a dataset folder"


def test_an_unexpected_error_is_named() -> None:
    job = ChildJob("child_jobs:bug").start()
    _run(job)
    assert str(job.outcome[1]) == "ZeroDivisionError: division by zero"


def test_a_child_that_dies_is_an_error_message() -> None:
    job = ChildJob("child_jobs:die").start()
    _run(job)  # its last messages may be lost with it: the queue's feeder thread is killed too
    kind, exc = job.outcome
    assert kind == "error" and "stopped by signal 9" in str(exc)


def test_cancel_reaches_the_child() -> None:
    job = ChildJob("child_jobs:wait_for_cancel").start()
    _run(job, on_item=lambda _items: job.cancel())
    kind, exc = job.outcome
    assert kind == "error" and isinstance(exc, Cancelled)


def test_only_module_level_functions_can_be_jobs() -> None:
    def local(*, report, cancel):  # pragma: no cover - never run
        return None

    with pytest.raises(ValueError, match="not a module-level function"):
        target_name(local)
    with pytest.raises(ValueError, match="module:function"):
        target_name("no_colon")
