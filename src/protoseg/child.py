"""Run a long job (training, a whole-slide run) in a spawned child process, so that a GUI stays responsive.

The job is a module-level function ``fn(*, report, cancel, **kwargs)``: ``report(item)`` sends a picklable
progress item to the parent, ``cancel`` is a :class:`~protoseg.cancel.CancelToken` the parent can set. The
child puts ``("event", item)`` messages on a queue, then one ``("done", result)`` or ``("error", failure)``;
a child that dies without either (killed, out of memory, a native crash) is reported by its exit code.
Qt-free: ``protoseg.napari.widgets.jobs.ProcessJob`` drives it from the viewer.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing as mp
import os
import queue
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from protoseg.cancel import Cancelled, CancelToken
from protoseg.errors import ProtosegError

logger = logging.getLogger(__name__)

#: how much lower than the parent the child runs (Unix nice): the viewer wins a contested core, while the job
#: still gets a fair share next to other busy programs (10 starved it behind two busy loops)
CHILD_NICE = 3


class ChildError(ProtosegError):
    """A job failed in its child process; the message is the child's one-line error."""


@dataclass(frozen=True)
class Failure:
    """A child's error in picklable form: its type name, its message and whether it was a cancellation."""

    kind: str
    message: str
    cancelled: bool = False
    detail: str = ""

    def exception(self) -> BaseException:
        """The error to hand to the parent's error handler."""
        if self.cancelled:
            return Cancelled(self.message)
        return ChildError(self.message if self.kind in _PLAIN_KINDS else f"{self.kind}: {self.message}")


_PLAIN_KINDS = ("ProtosegError", "ValueError", "OSError", "FileNotFoundError", "PermissionError")


def target_name(fn: Callable[..., Any] | str) -> str:
    """``module:qualname`` of a module-level function (what the child imports); a string is taken as is, so
    the parent need not import the job's module."""
    if isinstance(fn, str):
        if fn.count(":") != 1:
            raise ValueError(f"{fn!r} is not a 'module:function' name")
        return fn
    name = f"{fn.__module__}:{fn.__qualname__}"
    if "<" in name or "." in fn.__qualname__:
        raise ValueError(f"{name} is not a module-level function: a child process cannot import it")
    return name


def _resolve(target: str) -> Callable[..., Any]:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


def _child_main(target: str, kwargs: dict[str, Any], messages: Any, cancel_event: Any, level: int) -> None:
    """Entry point of the child process."""
    # OpenMP threads that spin while waiting collapse throughput when other programs hold the cores
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s [child]: %(message)s")
    if hasattr(os, "nice"):
        try:
            os.nice(CHILD_NICE)
        except OSError:
            pass
    token = CancelToken(cancel_event)
    try:
        result = _resolve(target)(report=lambda item: messages.put(("event", item)), cancel=token, **kwargs)
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the parent as a message
        protoseg_error = isinstance(exc, ProtosegError) and not isinstance(exc, Cancelled)
        kind = "ProtosegError" if protoseg_error else type(exc).__name__
        detail = "" if protoseg_error else traceback.format_exc()
        if detail:
            logger.error("job %s failed in its child process:\n%s", target, detail)
        messages.put(("error", Failure(kind, str(exc) or kind, isinstance(exc, Cancelled), detail)))
    else:
        messages.put(("done", result))
    messages.close()
    messages.join_thread()  # everything is in the pipe before the process exits


class ChildJob:
    """One job in a spawned child process; the parent polls it with :meth:`poll` (never blocks)."""

    def __init__(self, fn: Callable[..., Any] | str, **kwargs: Any) -> None:
        self.target = target_name(fn)
        self.kwargs = kwargs
        ctx = mp.get_context("spawn")  # never fork a process holding Qt, GL and torch threads
        self._messages = ctx.Queue()
        self._cancel = ctx.Event()
        self._process = ctx.Process(
            target=_child_main,
            args=(self.target, kwargs, self._messages, self._cancel, logging.getLogger("protoseg").getEffectiveLevel()),
            name=f"protoseg-{self.target.rsplit(':', 1)[-1]}",
            daemon=True,
        )
        self.outcome: tuple[str, Any] | None = None

    def start(self) -> ChildJob:
        self._process.start()
        return self

    @property
    def pid(self) -> int | None:
        return self._process.pid

    def cancel(self) -> None:
        """Ask the job to stop at its next check (it keeps what it finished)."""
        self._cancel.set()

    def kill(self) -> None:
        """Stop the child at once (closing the viewer)."""
        if self._process.is_alive():
            self._process.kill()

    def poll(self) -> list[Any]:
        """Progress items received since the last call; sets :attr:`outcome` when the job has ended."""
        items: list[Any] = []
        alive = self._process.is_alive()  # read before draining: a child that exits meanwhile is drained
        while self.outcome is None:
            try:
                kind, value = self._messages.get_nowait()
            except queue.Empty:
                break
            except (EOFError, OSError):  # the pipe broke with the child
                break
            if kind == "event":
                items.append(value)
            elif kind == "done":
                self.outcome = ("done", value)
            else:
                self.outcome = ("error", value.exception() if isinstance(value, Failure) else ChildError(str(value)))
        if self.outcome is None and not alive:
            code = self._process.exitcode
            self.outcome = ("error", ChildError(_death_message(self.target, code)))
        if self.outcome is not None:
            self._process.join(timeout=0)  # never wait here (a GUI thread): the child may still be exiting
        return items


def _death_message(target: str, code: int | None) -> str:
    """What to tell the user when the child ended without a result."""
    job = target.rsplit(":", 1)[-1]
    if code is not None and code < 0:
        return (
            f"the {job} process was stopped by signal {-code} (killed, out of memory or a crash in native code); "
            "its last checkpoint or finished chunks are kept"
        )
    return f"the {job} process ended with exit code {code} without a result; see the terminal log"
