"""Background-job plumbing of the widgets: a worker thread or a child process whose events reach the GUI
thread in batches, the napari progress bar that follows it, and the triton/LLVM guard run before a job may
import torchvision."""

from __future__ import annotations

import importlib
import logging
import queue
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, QTimer

from protoseg.cancel import Cancelled, CancelToken

logger = logging.getLogger(__name__)


def guard_triton_llvm_clash() -> bool:
    """Keep triton out of a process whose OpenGL driver already loaded Mesa's libLLVM (llvmpipe, radeonsi).

    Loading triton's own LLVM after that segfaults the viewer; torch imports triton only for
    ``torch.compile`` (torchvision -> torch._dynamo probes for it), which protoseg does not use.
    Call it before code that may import torchvision (building a model, starting a job); it is cheap
    and idempotent. Returns True when triton was marked unavailable.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa libLLVM clash
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    logger.info("OpenGL uses Mesa's LLVM: triton disabled in this napari session to avoid an LLVM clash")
    return True


def warm_imports(*modules: str) -> threading.Thread:
    """Import ``modules`` in a background thread (pure-Python imports let the GUI thread run in between), so a
    later first use on the GUI thread (napari's Labels layer imports pandas: 1-2 s) finds them loaded."""

    def run() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except ImportError as exc:  # optional module: the later use reports it properly
                logger.debug("warm import of %s failed: %s", name, exc)

    thread = threading.Thread(target=run, name="protoseg-warm-imports", daemon=True)
    thread.start()
    return thread


class BackgroundJob(QObject):
    """Run ``fn(report, cancel)`` in a napari thread worker; never blocks the GUI.

    ``report(item)`` may be called from the worker thread: items are queued and handed to
    ``on_events(list_of_items)`` on the GUI thread every ``interval_ms`` (batched, so a fast loop cannot
    flood the event loop). ``on_done(result)`` or ``on_error(exc)`` run on the GUI thread after the last
    events. ``cancel()`` sets the ``CancelToken`` the function is expected to honour; a function that
    stops by raising ``protoseg.cancel.Cancelled`` reaches ``on_error`` with it (logged as info, not as a failure).
    """

    def __init__(
        self,
        fn: Callable[[Callable[[Any], None], CancelToken], Any],
        on_events: Callable[[list[Any]], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        interval_ms: int = 50,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.fn, self.on_events, self.on_done, self.on_error = fn, on_events, on_done, on_error
        self.token = CancelToken()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._drain)
        self._outcome: tuple[str, Any] | None = None
        self.worker: Any = None
        self.finished = False

    def start(self) -> BackgroundJob:
        from napari.qt.threading import create_worker

        guard_triton_llvm_clash()  # the job may import torchvision after OpenGL started
        self.worker = create_worker(self.fn, self._queue.put, self.token, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda r: self._set_outcome("done", r))
        self.worker.errored.connect(lambda e: self._set_outcome("error", e))
        self.worker.finished.connect(self._finish)
        self._timer.start()
        self.worker.start()
        return self

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.finished

    def cancel(self) -> None:
        self.token.cancel()

    def _set_outcome(self, kind: str, value: Any) -> None:
        self._outcome = (kind, value)

    def _drain(self) -> None:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if items and self.on_events is not None:
            self.on_events(items)

    def _finish(self) -> None:
        self._timer.stop()
        self._drain()
        self.finished = True
        kind, value = self._outcome or ("error", RuntimeError("background job ended without a result"))
        if kind == "done" and self.on_done is not None:
            self.on_done(value)
        elif kind == "error":
            if isinstance(value, Cancelled):
                logger.info("background job stopped: %s", value)
            else:
                logger.error("background job failed: %s", value, exc_info=value)
            if self.on_error is not None:
                self.on_error(value)


class ProcessJob(QObject):
    """Run ``fn(report=..., cancel=..., **kwargs)`` (a module-level function, or its ``"module:name"``) in a
    spawned child process.

    Same interface as :class:`BackgroundJob`: ``on_events`` gets the reported items in batches, then
    ``on_done(result)`` or ``on_error(exc)`` on the GUI thread. Heavy work (training, whole-slide runs) runs
    here: its imports, its GIL and its garbage collections never reach the viewer, and a crash in the child
    is an error message in the dock, not a dead viewer. ``cancel()`` asks it to stop after the current
    step; ``kill()`` ends it at once (used when the dock closes).
    """

    def __init__(
        self,
        fn: Callable[..., Any] | str,
        kwargs: dict[str, Any],
        on_events: Callable[[list[Any]], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        interval_ms: int = 50,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        from protoseg.child import ChildJob

        self.child = ChildJob(fn, **kwargs)
        self.on_events, self.on_done, self.on_error = on_events, on_done, on_error
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._poll)
        self.started = False
        self.finished = False

    def start(self) -> ProcessJob:
        self.child.start()
        self.started = True
        self._timer.start()
        return self

    @property
    def running(self) -> bool:
        return self.started and not self.finished

    def cancel(self) -> None:
        self.child.cancel()

    def kill(self) -> None:
        self.child.kill()

    def _poll(self) -> None:
        items = self.child.poll()
        if items and self.on_events is not None:
            self.on_events(items)
        if self.child.outcome is None:
            return
        self._timer.stop()
        self.finished = True
        kind, value = self.child.outcome
        if kind == "done":
            if self.on_done is not None:
                self.on_done(value)
            return
        if isinstance(value, Cancelled):
            logger.info("child job stopped: %s", value)
        else:
            logger.error("child job failed: %s", value)
        if self.on_error is not None:
            self.on_error(value)


class NapariProgress:
    """One napari activity-dock progress bar that follows (done, total, description) updates."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._key: tuple[int, str] | None = None

    def update(self, done: int, total: int, desc: str) -> None:
        from napari.utils import progress

        if self._key != (total, desc):
            self.close()
            self._bar, self._key = progress(total=max(0, int(total)), desc=desc), (total, desc)
        delta = int(done) - int(self._bar.n)
        if delta:
            self._bar.update(delta)

    @property
    def n(self) -> int:
        return int(self._bar.n) if self._bar is not None else 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None
