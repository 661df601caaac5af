"""protoseg.outputs: the ownership marker, replaceability, atomic folder/file replacement, stale temporaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from protoseg import outputs
from protoseg.outputs import OutputOwnershipError


def test_marker_round_trip_and_ownership(tmp_path: Path) -> None:
    assert outputs.read_marker(tmp_path) is None
    outputs.write_marker(tmp_path, "image-bank", note="x")
    marker = outputs.read_marker(tmp_path)
    assert marker is not None and marker["kind"] == "image-bank" and marker["note"] == "x" and marker["version"]
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
    outputs.write_marker(ours, "k")
    assert outputs.check_replaceable(ours, "k") is True
    with pytest.raises(OutputOwnershipError, match="holds a protoseg k output"):
        outputs.check_replaceable(ours, "other")
    user = tmp_path / "user"
    user.mkdir()
    (user / "manifest.json").write_text("{}")  # a name like ours proves nothing
    with pytest.raises(OutputOwnershipError, match=r"user exists and was not written by protoseg.*--overwrite"):
        outputs.check_replaceable(user, "k")
    assert outputs.check_replaceable(user, "k", overwrite=True) is True
    afile = tmp_path / "f.txt"
    afile.write_text("x")
    with pytest.raises(OutputOwnershipError, match="not written by protoseg"):
        outputs.check_replaceable(afile, "k")


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
