"""Bank folder format: curated round trip, atomic overwrite, and clear errors for broken folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.bank import (
    BankFormatError,
    BankMember,
    ImageBank,
    add_member,
    bank_manifest,
    exclude,
    include,
    load_bank,
    pin,
    save_bank,
)
from protoseg.classes import ClassSpec
from protoseg.models.encoders import ImageEncoder
from protoseg.outputs import OutputOwnershipError

torch.set_num_threads(2)
SPEC = ClassSpec(names=("TUM", "STR"), colors=((255, 0, 0), (0, 255, 0)))


class MeanColour(ImageEncoder):
    """Test encoder: mean RGB colour."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_id, self.dim, self.input_size = "test-mean-colour", 3, 8

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def small_bank() -> ImageBank:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(6, 3)).astype(np.float32) + 2.0
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    members = tuple(
        BankMember(
            f"m{i:06d}",
            i // 3,
            i % 2,
            f"/data/p{i}.png",
            box=(i, 2 * i, 32, 32) if i % 2 else None,
            mpp=0.5 if i % 2 else None,
            distance=float(np.float32(0.01 * i)),
        )
        for i in range(6)
    )
    thumbs = rng.integers(0, 256, size=(6, 64, 64, 3), dtype=np.uint8)
    return ImageBank(SPEC, "test-mean-colour", 2, members, feats, thumbs, n_per_cluster=3)


def test_curated_round_trip(tmp_path: Path) -> None:
    bank = small_bank()
    bank = exclude(bank, ["m000001", "m000004"])
    bank = include(bank, "m000004")
    bank = pin(bank, "m000002")
    bank = add_member(
        bank, np.full((20, 20, 3), (40, 160, 60), np.uint8), 1, MeanColour(), source="viewer", box=(5, 6, 20, 20)
    )
    folder = save_bank(bank, tmp_path / "bank")
    names = sorted(p.name for p in folder.iterdir())
    assert names == [".protoseg-output.json", "features.npy", "manifest.json", "thumbnails.npy"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["format"] == "protoseg-image-bank" and manifest["version"] == 1
    assert manifest["classes"]["names"] == ["TUM", "STR"] and manifest["classes"]["colors"][1] == [0, 255, 0]
    assert manifest["encoder_id"] == "test-mean-colour" and manifest["k"] == 2
    rec = {r["id"]: r for r in manifest["members"]}
    assert rec["m000001"]["excluded"] and not rec["m000004"]["excluded"] and rec["m000002"]["pinned"]
    assert (
        rec["m000006"]["added_by_user"]
        and rec["m000006"]["box"] == [5, 6, 20, 20]
        and rec["m000006"]["class_name"] == "STR"
    )
    loaded = load_bank(folder)
    assert bank_manifest(loaded) == bank_manifest(bank)
    assert loaded.members == bank.members
    np.testing.assert_array_equal(loaded.features, bank.features)
    np.testing.assert_array_equal(loaded.thumbnails, bank.thumbnails)
    assert torch.equal(loaded.prototypes(), bank.prototypes())
    assert loaded.class_spec == bank.class_spec


def test_save_replaces_existing_bank_atomically(tmp_path: Path) -> None:
    bank = small_bank()
    save_bank(bank, tmp_path / "bank")
    smaller = exclude(bank, "m000000")
    save_bank(smaller, tmp_path / "bank")
    assert load_bank(tmp_path / "bank").members[0].excluded
    assert [p.name for p in tmp_path.iterdir()] == ["bank"]  # no temp or backup folders left
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("x")
    with pytest.raises(OutputOwnershipError, match="not written by protoseg"):
        save_bank(bank, other)
    assert (other / "todo.txt").exists()


def _corrupt(tmp_path: Path, edit) -> Path:
    folder = save_bank(small_bank(), tmp_path / "bank")
    edit(folder)
    return folder


def _edit_manifest(change):
    def edit(folder: Path) -> None:
        m = json.loads((folder / "manifest.json").read_text())
        change(m)
        (folder / "manifest.json").write_text(json.dumps(m))

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda f: (f / "manifest.json").unlink(), "manifest.json is missing"),
        (lambda f: (f / "manifest.json").write_text("{not json"), "not valid JSON"),
        (_edit_manifest(lambda m: m.update(format="something-else")), "not a protoseg image bank manifest"),
        (_edit_manifest(lambda m: m.update(version=99)), "version 99 is not supported"),
        (_edit_manifest(lambda m: m.pop("encoder_id")), "lacks the keys"),
        (_edit_manifest(lambda m: m["members"].pop()), "features.npy has shape"),
        (_edit_manifest(lambda m: m["members"][0].update({"class_name": "STR"})), "does not match name"),
        (_edit_manifest(lambda m: m["members"][0].update({"cluster": 5})), "outside"),
        (_edit_manifest(lambda m: m["members"][0].pop("cluster")), "bad member record"),
        (lambda f: (f / "features.npy").unlink(), "features.npy is missing"),
        (lambda f: np.save(f / "thumbnails.npy", np.zeros((6, 8, 8), np.uint8)), "thumbnails.npy has shape"),
        (lambda f: (f / "features.npy").write_bytes(b"garbage"), "cannot be read"),
    ],
)
def test_broken_folders_raise_bank_format_error(tmp_path: Path, edit, message: str) -> None:
    folder = _corrupt(tmp_path, edit)
    with pytest.raises(BankFormatError, match=message):
        load_bank(folder)


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(BankFormatError, match="does not exist"):
        load_bank(tmp_path / "nowhere")
