"""protoseg.outputs: the ownership marker, replaceability, atomic folder/file replacement, stale temporaries,
appending only to plain files, and permissions from the umask."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from protoseg import outputs
from protoseg.outputs import OutputOwnershipError


def test_marker_round_trip_and_ownership(tmp_path: Path) -> None:
    assert outputs.read_marker(tmp_path) is None
    outputs.write_marker(tmp_path, "image-bank", note="x")
    marker = outputs.read_marker(tmp_path)
    assert marker is not None and marker["kind"] == "image-bank" and marker["note"] == "x" and marker["version"]
    assert marker["entries"] == []  # what protoseg wrote there: nothing but the marker
    assert outputs.owned_by(tmp_path, "image-bank") and not outputs.owned_by(tmp_path, "prediction")
    (tmp_path / outputs.MARKER).write_text("{not json")
    assert outputs.read_marker(tmp_path) is None
    (tmp_path / outputs.MARKER).write_text(json.dumps({"kind": 3}))
    assert outputs.read_marker(tmp_path) is None  # kind must be a string


def test_check_replaceable(tmp_path: Path) -> None:
    assert outputs.check_replaceable(tmp_path / "missing", "k") is False
    empty = tmp_path / "empty"
    empty.mkdir()
    assert outputs.check_replaceable(empty, "k") is False
    ours = tmp_path / "ours"
    ours.mkdir()
    (ours / "data").mkdir()
    outputs.write_marker(ours, "k")
    assert outputs.check_replaceable(ours, "k") is True
    with pytest.raises(OutputOwnershipError, match=r"holds a protoseg k output.*--overwrite"):
        outputs.check_replaceable(ours, "other")
    assert outputs.check_replaceable(ours, "other", overwrite=True) is True  # one protoseg output over another
    user = tmp_path / "user"
    user.mkdir()
    (user / "manifest.json").write_text("{}")  # a name like ours proves nothing
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    for overwrite in (False, True):  # --overwrite never replaces what protoseg did not write
        with pytest.raises(OutputOwnershipError, match=r"user/manifest\.json, not written by protoseg"):
            outputs.check_replaceable(user, "k", overwrite=overwrite)
        with pytest.raises(OutputOwnershipError, match="is a file, not written by protoseg"):
            outputs.check_replaceable(afile, "k", overwrite=overwrite)


def test_overwrite_never_replaces_a_folder_holding_anything_protoseg_did_not_write(tmp_path: Path) -> None:
    """Issue 22 item 1: ``--overwrite`` may replace only what protoseg wrote; anything else is named."""
    user = tmp_path / "user"
    user.mkdir()
    for name in (".git", "thesis.docx", "other-run"):
        (user / name).write_text("years of work")
    with pytest.raises(OutputOwnershipError, match=r"user/\.git \(and 2 more\), not written by protoseg"):
        with outputs.replace_dir(user, "k", overwrite=True):
            pass
    assert sorted(p.name for p in user.iterdir()) == [".git", "other-run", "thesis.docx"]
    ours = tmp_path / "ours"
    with outputs.replace_dir(ours, "k") as tmp:
        (tmp / "a.txt").write_text("1")
    assert outputs.read_marker(ours)["entries"] == ["a.txt"]
    (ours / ".a.txt.1f2e3d.tmp").write_text("left by a killed writer")  # protoseg's own temporary
    assert outputs.foreign_entries(ours) == []
    (ours / "notes.txt").write_text("added by the user")
    assert outputs.foreign_entries(ours) == ["notes.txt"]
    with pytest.raises(OutputOwnershipError, match=r"ours/notes\.txt"), outputs.replace_dir(ours, "k", overwrite=True):
        pass
    assert (ours / "notes.txt").read_text() == "added by the user" and (ours / "a.txt").exists()


def test_older_outputs_are_adopted_only_when_they_hold_nothing_else(tmp_path: Path) -> None:
    old = tmp_path / "old"
    old.mkdir()
    (old / "a.npy").write_text("x")
    (old / outputs.MARKER).write_text(json.dumps({"kind": "k", "version": "0.0"}))  # no entries listed
    assert outputs.foreign_entries(old) == ["a.npy"]
    assert not outputs.adopt_legacy(old, "k", {"a.npy"}, lambda p: False)  # its format check failed
    assert outputs.adopt_legacy(old, "k", {"a.npy", "b.npy"}, lambda p: True)
    assert outputs.read_marker(old)["entries"] == ["a.npy"] and outputs.foreign_entries(old) == []
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "a.npy").write_text("x")
    (mixed / "notes.txt").write_text("mine")
    assert not outputs.adopt_legacy(mixed, "k", {"a.npy"}, lambda p: True)
    assert outputs.read_marker(mixed) is None


def test_replace_dir_is_atomic_and_keeps_foreign_folders(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with outputs.replace_dir(target, "k") as tmp:
        (tmp / "a.txt").write_text("1")
        assert not target.exists()  # nothing visible until the block succeeds
    assert (target / "a.txt").read_text() == "1" and outputs.owned_by(target, "k")
    with outputs.replace_dir(target, "k") as tmp:  # ours: replaced whole (old files gone)
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in target.iterdir()) == [outputs.MARKER, "b.txt"]
    with pytest.raises(RuntimeError), outputs.replace_dir(target, "k") as tmp:
        (tmp / "c.txt").write_text("3")
        raise RuntimeError("writer failed")
    assert sorted(p.name for p in target.iterdir()) == [outputs.MARKER, "b.txt"]  # untouched on failure
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporaries left
    user = tmp_path / "user"
    user.mkdir()
    (user / "keep.txt").write_text("mine")
    with pytest.raises(OutputOwnershipError), outputs.replace_dir(user, "k"):
        pass
    assert (user / "keep.txt").read_text() == "mine"


def test_atomic_write_and_stale_temporaries(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "file.bin"
    outputs.atomic_write_bytes(path, b"abc")
    outputs.atomic_write_text(path, "new")
    assert path.read_text() == "new"

    def failing(tmp: Path) -> None:
        tmp.write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        outputs.atomic_write(path, failing)
    assert path.read_text() == "new" and sorted(p.name for p in path.parent.iterdir()) == ["file.bin"]
    (tmp_path / ".last.pt.x1.tmp").write_bytes(b"orphan")
    (tmp_path / ".bank.x2.tmp").mkdir()
    (tmp_path / "keep.tmp").write_text("not ours: no leading dot")
    assert outputs.clean_stale_temporaries(tmp_path) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.tmp", "sub"]


def test_append_text_never_writes_through_a_link(tmp_path: Path) -> None:
    """Issue 22 item 4: append-mode writers refuse links (and non-regular files); the user's file is untouched."""
    (tmp_path / "run").mkdir()
    log = tmp_path / "run" / "metrics.jsonl"
    outputs.append_text(log, "a\n")
    outputs.append_text(log, "b\n")
    assert log.read_text() == "a\nb\n"
    user = tmp_path / "diary.txt"
    user.write_text("mine\n")
    soft = tmp_path / "run" / "soft.jsonl"
    soft.symlink_to(user)
    hard = tmp_path / "run" / "hard.jsonl"
    os.link(user, hard)
    fifo = tmp_path / "run" / "fifo.jsonl"
    os.mkfifo(fifo)
    for path, why in ((soft, "is a symbolic link"), (hard, "has 1 other hard link"), (fifo, "is not a regular file")):
        with pytest.raises(OutputOwnershipError, match=rf"{path.name} {why}.*remove it"):
            outputs.append_text(path, "row\n")
    assert user.read_text() == "mine\n" and soft.is_symlink()


@pytest.fixture
def umask_002() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_outputs_get_the_permissions_of_the_umask(tmp_path: Path, umask_002: None) -> None:
    """Issue 22 item 5: not mkstemp's 0600 / mkdtemp's 0700, so a group can read a shared export."""
    assert _mode(outputs.atomic_write_text(tmp_path / "a.txt", "x")) == 0o664
    with outputs.replace_dir(tmp_path / "folder", "k") as tmp:
        (tmp / "b.txt").write_text("y")
    assert _mode(tmp_path / "folder") == 0o775 and _mode(tmp_path / "folder" / outputs.MARKER) == 0o664
    outputs.append_text(tmp_path / "log.jsonl", "{}\n")
    assert _mode(tmp_path / "log.jsonl") == 0o664
    os.umask(0o077)  # a private umask is honoured too
    assert _mode(outputs.atomic_write_text(tmp_path / "c.txt", "x")) == 0o600
