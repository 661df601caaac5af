"""What protoseg may overwrite: output folders carry a marker naming the protoseg kind that wrote them,
and every writer replaces only its own kind, atomically (write beside, then rename over).

A folder is *ours* when it holds ``.protoseg-output.json`` with ``{"kind": K, ...}``; anything else
that is non-empty belongs to the user and is refused unless the caller passes ``overwrite=True``
(the CLI's ``--overwrite``). A file named like one of ours (e.g. ``manifest.json``) proves nothing.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protoseg.errors import ProtosegError

logger = logging.getLogger(__name__)

MARKER = ".protoseg-output.json"


class OutputOwnershipError(ProtosegError):
    """An output path holds something protoseg did not write (or another kind of output)."""


def _version() -> str:
    import protoseg  # the package's own version (layer 0)

    return str(protoseg.__version__)


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of a protoseg output folder, or None when there is none (or it is unreadable)."""
    path = Path(folder) / MARKER
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("kind"), str) else None


def write_marker(folder: str | os.PathLike[str], kind: str, **info: Any) -> None:
    """Mark ``folder`` as a protoseg output of ``kind`` (extra JSON-able ``info`` is recorded too)."""
    atomic_write_text(Path(folder) / MARKER, json.dumps({"kind": kind, "version": _version(), **info}, indent=1))


def owned_by(folder: str | os.PathLike[str], kind: str) -> bool:
    """True when ``folder`` carries a marker of exactly ``kind``."""
    marker = read_marker(folder)
    return marker is not None and marker.get("kind") == kind


def check_replaceable(
    path: str | os.PathLike[str], kind: str, *, overwrite: bool = False, what: str = "output"
) -> bool:
    """Whether ``path`` may be (re)written as a ``kind`` output; True when something is there to replace.

    Missing paths and empty folders are free; a folder marked with ``kind`` is ours; anything else
    raises ``OutputOwnershipError`` naming the path, unless ``overwrite`` (the user asked).
    """
    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir() and not any(path.iterdir()):
        return False
    if path.is_dir() and owned_by(path, kind):
        return True
    if overwrite:
        logger.warning("replacing %s at the user's request (--overwrite)", path)
        return True
    found = read_marker(path) if path.is_dir() else None
    why = f"holds a protoseg {found['kind']} output" if found else "exists and was not written by protoseg"
    raise OutputOwnershipError(
        f"{what} {path} {why}; choose a new path, or pass --overwrite (overwrite=True) to replace it."
    )


@contextmanager
def replace_dir(folder: str | os.PathLike[str], kind: str, *, overwrite: bool = False, **info: Any) -> Iterator[Path]:
    """Write a whole output folder atomically: yields a temporary sibling to fill; on success it is
    marked with ``kind`` and renamed over ``folder`` (after ``check_replaceable``); on error it is removed."""
    folder = Path(folder)
    check_replaceable(folder, kind, overwrite=overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        yield tmp
        write_marker(tmp, kind, **info)
        old = None
        if folder.exists():
            old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
            folder.rename(old)
        tmp.rename(folder)
        if old is not None:
            _remove(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write a text file atomically (UTF-8)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write a binary file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def clean_stale_temporaries(folder: str | os.PathLike[str], pattern: str = ".*.tmp") -> int:
    """Remove temporaries left by a killed writer (``.<name>.*.tmp`` siblings); returns how many."""
    n = 0
    for p in Path(folder).glob(pattern):
        _remove(p)
        n += 1
    if n:
        logger.info("removed %d stale temporary file(s) in %s", n, folder)
    return n
