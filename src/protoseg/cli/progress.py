"""Progress for the CLI: a tqdm bar on a terminal; when stderr is piped or redirected (a log file, a cluster
job), a log line at most every ``EVERY_PERCENT`` percent or ``EVERY_SECONDS`` seconds instead of one line
per update."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)

#: Progress gained (percent of the total) that earns a new log line when stderr is not a terminal.
EVERY_PERCENT = 10.0
#: Seconds after which a new log line is written anyway (long steps, unknown totals).
EVERY_SECONDS = 60.0


def stderr_is_terminal() -> bool:
    """True when stderr is an interactive terminal (a redrawn bar makes sense there)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


class LoggedProgress:
    """The part of tqdm's interface the CLI uses (``update``, ``n``, ``total``, ``set_postfix``, ``write``,
    ``refresh``, ``close``, a context manager), writing throttled log lines instead of a redrawn bar."""

    def __init__(
        self,
        desc: str = "",
        total: int | None = None,
        initial: int = 0,
        unit: str = "it",
        disable: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.n, self.unit, self.disable = desc, total, initial, unit, disable
        self._clock = clock
        self._start = self._last_time = clock()
        self._last_n = initial
        self._postfix = ""
        self.lines = 0  #: log lines written so far

    def _percent(self, n: int) -> float:
        return 100.0 * n / self.total if self.total else 0.0

    def _due(self) -> bool:
        if self.n == self._last_n:
            return False
        by_percent = bool(self.total) and self._percent(self.n) - self._percent(self._last_n) >= EVERY_PERCENT
        return by_percent or self._clock() - self._last_time >= EVERY_SECONDS

    def _log(self) -> None:
        elapsed = max(1e-9, self._clock() - self._start)
        done = f"{self.n}/{self.total} ({self._percent(self.n):.0f}%)" if self.total else str(self.n)
        rate = f"{self.n / elapsed:.2f} {self.unit}/s"
        logger.info("%s: %s %s, %s%s", self.desc, done, self.unit, rate, self._postfix)
        self._last_n, self._last_time = self.n, self._clock()
        self.lines += 1

    def update(self, k: int = 1) -> None:
        """Advance by ``k``; logs when the last line is ``EVERY_PERCENT`` percent or ``EVERY_SECONDS`` old."""
        self.n += k
        self.refresh()

    def refresh(self) -> None:
        """Log now if a line is due (after ``n`` was set directly)."""
        if not self.disable and self._due():
            self._log()

    def set_postfix(self, values: dict[str, Any], refresh: bool = False) -> None:
        """Values shown at the end of the next line (e.g. the latest losses)."""
        self._postfix = ", " + " ".join(f"{k}={v}" for k, v in values.items()) if values else ""

    def write(self, text: str) -> None:
        """A message between progress lines (validation results)."""
        logger.info("%s", text)

    def close(self) -> None:
        """Log the final count unless the last line already said it."""
        if not self.disable and self.n != self._last_n:
            self._log()
        self.disable = True

    def __enter__(self) -> LoggedProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress_bar(desc: str, total: int | None = None, initial: int = 0, unit: str = "it", disable: bool = False) -> Any:
    """A tqdm bar on stderr when it is a terminal, else a ``LoggedProgress`` (one line per 10 % or minute)."""
    if stderr_is_terminal():
        from tqdm import tqdm

        return tqdm(
            total=total, initial=initial, desc=desc, unit=unit, disable=disable, file=sys.stderr, dynamic_ncols=True
        )
    return LoggedProgress(desc, total=total, initial=initial, unit=unit, disable=disable)
