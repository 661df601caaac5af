"""What protoseg may overwrite: output folders carry a marker naming the protoseg kind that wrote them
and the entries it wrote there, and every writer replaces only its own outputs, atomically (write beside,
then rename over).

A folder is *ours* when it holds ``.protoseg-output.json`` with ``{"kind": K, "entries": [...], ...}``
(a zarr v3 group folder keeps the same record in its ``zarr.json`` attribute ``protoseg_output`` instead,
so zarr sees no foreign file in the store) and nothing at its top level but those entries (and protoseg's
own ``.<name>.<random>.tmp`` temporaries). A folder holding anything else is the user's and is refused,
even with ``overwrite=True`` (the CLI's ``--overwrite``), naming a foreign file: ``overwrite`` only lets
one protoseg output replace another of a different kind. A file named like one of ours (e.g.
``manifest.json``) proves nothing. New files and folders get the permissions the umask gives (not
``mkstemp``'s 0600), and append-mode writers never write through a symbolic or hard link.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import stat
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from protoseg.errors import ProtosegError

logger = logging.getLogger(__name__)

MARKER = ".protoseg-output.json"
#: The attribute of a zarr v3 group's root ``zarr.json`` that holds the marker of a zarr output folder: a
#: marker file there would be listed by zarr ("not a zarr component" warning on every member listing).
ZARR_MARKER_ATTR = "protoseg_output"
_ZARR_JSON = "zarr.json"
_TEMP_SUFFIX = ".tmp"


class OutputOwnershipError(ProtosegError):
    """An output path holds something protoseg did not write (or another kind of output)."""


def _version() -> str:
    import protoseg  # the package's own version (layer 0)

    return str(protoseg.__version__)


def marker_info(kind: str, **info: Any) -> dict[str, Any]:
    """The metadata protoseg records in its outputs: ``{"kind": kind, "version": ..., **info}``."""
    return {"kind": kind, "version": _version(), **info}


def written_by() -> str:
    """``"protoseg <version>"``: how protoseg signs a file whose format has no metadata slot (CSV rows)."""
    return f"protoseg {_version()}"


def is_marker(data: Any, kind: str | None = None) -> bool:
    """True when ``data`` is protoseg metadata (``marker_info``), of ``kind`` when given."""
    return isinstance(data, dict) and isinstance(data.get("kind"), str) and kind in (None, data["kind"])


def _zarr_group_meta(folder: Path) -> dict[str, Any] | None:
    """The root ``zarr.json`` of a zarr v3 group folder as a dict, or None when ``folder`` is not one."""
    try:
        meta = json.loads((folder / _ZARR_JSON).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return meta if isinstance(meta, dict) and meta.get("node_type") == "group" else None


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of a protoseg output folder (its marker file, else its zarr group attribute), or None."""
    folder = Path(folder)
    try:
        data = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        data = (_zarr_group_meta(folder) or {}).get("attributes", {}).get(ZARR_MARKER_ATTR)
    return data if is_marker(data) else None


def marker_record(kind: str, entries: Iterable[str], **info: Any) -> dict[str, Any]:
    """The marker of a ``kind`` output holding ``entries`` (top-level names protoseg wrote) and ``info``."""
    return {**marker_info(kind, **info), "entries": sorted(set(entries) - {MARKER})}


def is_temporary(name: str) -> bool:
    """True for the name of a protoseg temporary (``.<name>.<random>.tmp``, left by a killed writer)."""
    return name.startswith(".") and name.endswith(_TEMP_SUFFIX) and name.count(".") >= 3


def write_marker(folder: str | os.PathLike[str], kind: str, entries: Iterable[str] | None = None, **info: Any) -> None:
    """Mark ``folder`` as a protoseg output of ``kind`` that protoseg wrote ``entries`` into (top-level
    names; default: everything the folder holds now); extra JSON-able ``info`` is recorded too. A zarr v3
    group folder gets it in its ``zarr.json`` (``ZARR_MARKER_ATTR``; an older marker file is removed)."""
    folder = Path(folder)
    if entries is None:
        entries = (p.name for p in folder.iterdir() if p.name != MARKER and not is_temporary(p.name))
    data = marker_record(kind, entries, **info)
    meta = _zarr_group_meta(folder)
    if meta is None:
        atomic_write_text(folder / MARKER, json.dumps(data, indent=1))
        return
    attributes = meta.get("attributes") if isinstance(meta.get("attributes"), dict) else {}
    meta["attributes"] = {**attributes, ZARR_MARKER_ATTR: data}
    atomic_write_text(folder / _ZARR_JSON, json.dumps(meta, indent=2))
    (folder / MARKER).unlink(missing_ok=True)


def owned_by(folder: str | os.PathLike[str], kind: str) -> bool:
    """True when ``folder`` carries a marker of exactly ``kind``."""
    return is_marker(read_marker(folder), kind)


def foreign_entries(folder: str | os.PathLike[str]) -> list[str]:
    """Top-level names in ``folder`` that its marker does not list as written by protoseg (all of them
    when there is no marker), sorted; the marker itself and protoseg temporaries are never foreign."""
    marker = read_marker(folder) or {}
    listed = marker.get("entries")
    known = {str(n) for n in listed} if isinstance(listed, list) else set()
    names = (p.name for p in Path(folder).iterdir())
    return sorted(n for n in names if n != MARKER and n not in known and not is_temporary(n))


def adopt_legacy(
    folder: str | os.PathLike[str], kind: str, entries: Iterable[str], valid: Callable[[Path], bool]
) -> bool:
    """Mark ``folder`` as a ``kind`` output written by an older protoseg (no marker, or one not listing its
    entries) when it holds nothing but ``entries`` and ``valid(folder)`` (its format check) passes."""
    folder = Path(folder)
    if not folder.is_dir():
        return False
    marker = read_marker(folder)
    if marker is not None and ("entries" in marker or marker["kind"] != kind):
        return False
    names = {p.name for p in folder.iterdir() if not is_temporary(p.name)} - {MARKER}
    if not names or not names <= set(entries) or not valid(folder):
        return False
    write_marker(folder, kind, entries=names, adopted=True)
    logger.info("adopted %s (a protoseg %s output written by an older version)", folder, kind)
    return True


def migrate_zarr_marker(folder: str | os.PathLike[str]) -> bool:
    """Move the marker file of a zarr group folder (as older versions wrote it) into its ``zarr.json``;
    True when moved. Markers without an entry list are left to ``adopt_legacy``."""
    folder = Path(folder)
    marker = read_marker(folder) if (folder / MARKER).is_file() else None
    if marker is None or not isinstance(marker.get("entries"), list) or _zarr_group_meta(folder) is None:
        return False
    info = {k: v for k, v in marker.items() if k not in ("kind", "entries")}
    write_marker(folder, marker["kind"], entries=[str(n) for n in marker["entries"]], **info)
    logger.info("moved the protoseg marker of %s into its zarr.json", folder)
    return True


def check_replaceable(
    path: str | os.PathLike[str], kind: str, *, overwrite: bool = False, what: str = "output"
) -> bool:
    """Whether ``path`` may be (re)written as a ``kind`` output; True when something is there to replace.

    Missing paths and empty folders are free; a folder holding only what protoseg wrote is replaceable,
    a ``kind`` output always, another kind's only with ``overwrite``. A file, or a folder holding
    anything else, raises ``OutputOwnershipError`` naming a foreign file, ``overwrite`` or not.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir():
        raise OutputOwnershipError(
            f"{what} {path} is a file, not written by protoseg; choose a new folder path "
            "(--overwrite replaces only protoseg's own outputs; nothing was changed)."
        )
    foreign = foreign_entries(path)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise OutputOwnershipError(
            f"{what} {path} holds {path / foreign[0]}{more}, not written by protoseg; choose a new or empty "
            "folder, or move those files out (--overwrite replaces only protoseg's own outputs; nothing was "
            "changed)."
        )
    found = read_marker(path)
    if found is None or found["kind"] == kind:
        return found is not None
    if overwrite:
        logger.warning("replacing the protoseg %s output %s at the user's request (--overwrite)", found["kind"], path)
        return True
    raise OutputOwnershipError(
        f"{what} {path} holds a protoseg {found['kind']} output; choose a new path, or pass --overwrite "
        "(overwrite=True) to replace it."
    )


def _new_temporary(path: Path, directory: bool = False) -> Path:
    """Create a fresh ``.<name>.<random>.tmp`` sibling of ``path`` (a file, or a folder when ``directory``)
    with the permissions the umask gives, as any other new file (``mkstemp``/``mkdtemp`` force 0600/0700)."""
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}{_TEMP_SUFFIX}"
        try:
            if directory:
                os.mkdir(tmp, 0o777)
            else:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


@contextmanager
def replace_dir(folder: str | os.PathLike[str], kind: str, *, overwrite: bool = False, **info: Any) -> Iterator[Path]:
    """Write a whole output folder atomically: yields a temporary sibling to fill; on success it is
    marked with ``kind`` and renamed over ``folder`` (after ``check_replaceable``); on error it is removed."""
    folder = Path(folder)
    check_replaceable(folder, kind, overwrite=overwrite)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(folder, directory=True)
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
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temporary(path)
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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | memoryview) -> Path:
    """Write a binary file atomically."""
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def _not_appendable(path: Path, why: str) -> OutputOwnershipError:
    return OutputOwnershipError(
        f"{path} {why}; protoseg appends only to a plain file of its own there, so nothing was written: "
        "remove it (a link's target is left as it is) or choose another output folder."
    )


def check_appendable(path: str | os.PathLike[str]) -> None:
    """Raise ``OutputOwnershipError`` unless ``path`` is missing or a regular file with no other name
    (not a symbolic link, not hard-linked elsewhere): what protoseg may append to or rewrite in place."""
    path = Path(path)
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise _not_appendable(path, "is a symbolic link")
    if not stat.S_ISREG(st.st_mode):
        raise _not_appendable(path, "is not a regular file")
    if st.st_nlink > 1:
        raise _not_appendable(path, f"has {st.st_nlink - 1} other hard link(s)")


def append_text(path: str | os.PathLike[str], text: str) -> None:
    """Append ``text`` (UTF-8) to ``path``, created with the umask's permissions when missing; never
    through a link (``check_appendable``, and ``O_NOFOLLOW`` against a link made in between)."""
    path = Path(path)
    check_appendable(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.EMLINK, errno.ENXIO):
            raise _not_appendable(path, "is a symbolic link or not a regular file") from exc
        raise
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:  # replaced between the check and the open
            raise _not_appendable(path, "is not a plain file of its own")
        fh.write(text)


def clean_stale_temporaries(folder: str | os.PathLike[str], pattern: str = ".*.tmp") -> int:
    """Remove temporaries left by a killed writer (``.<name>.*.tmp`` siblings); returns how many."""
    n = 0
    for p in Path(folder).glob(pattern):
        _remove(p)
        n += 1
    if n:
        logger.info("removed %d stale temporary file(s) in %s", n, folder)
    return n
