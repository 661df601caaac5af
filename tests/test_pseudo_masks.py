"""Pseudo-mask export: a fresh ``pseudo-masks`` output folder per checkpoint, ignore pixels visible in the
PNGs, unique names per sample, and stage 2 reading exactly what was exported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.classes import IGNORE_COLOR, IGNORE_INDEX, ClassSpec
from protoseg.config import load_config
from protoseg.data.datasets import PatchDataset
from protoseg.data.records import PatchRecord
from protoseg.models.checkpoint import Checkpoint, Stage
from protoseg.models.classnet import ClassNet
from protoseg.models.factory import model_config
from protoseg.outputs import OutputOwnershipError, read_marker, write_marker
from protoseg.train.pseudo import KIND, PseudoMaskDataset, PseudoMaskError, export_pseudo_masks, sample_keys
from protoseg.train.recipes import classnet_config

CLASSES = ClassSpec(names=("TUM", "STR", "LYM"))
SIZE = 32


def _cfg():
    return load_config(
        None,
        [
            "model.backbone=test_convnext",  # timm's smallest four-stage model
            "model.weights=null",
            "model.projector_hidden=16",
            "stage1.recipe=cam",
            f"data.patch_size={SIZE}",
            "data.batch_size=4",
            "run.device=cpu",
            "stage1.pseudo.bg_min_size=20",
        ],
    )


def _checkpoint(seed: int) -> Checkpoint:
    torch.manual_seed(seed)
    net = ClassNet(classnet_config(_cfg(), CLASSES.num_classes, 1, 1))
    return Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), CLASSES, patch_size=SIZE, epoch=seed)


def _dataset(root: Path, folders: tuple[str, ...] = ("a",), n: int = 3) -> PatchDataset:
    rng = np.random.default_rng(0)
    records = []
    for folder in folders:
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rgb = (rng.uniform(0.3, 0.8, (SIZE, SIZE, 3)) * 255).astype(np.uint8)
            rgb[:, SIZE // 2 :] = 240  # glass on the right half
            path = root / folder / f"p{i}.png"
            Image.fromarray(rgb).save(path)
            records.append(PatchRecord(image=path, name=path.stem, label=(1, 1, i % 2)))
    return PatchDataset(records, CLASSES)


def test_export_marks_folder_and_shows_ignore_pixels(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "data")
    out = export_pseudo_masks(_checkpoint(0), ds, tmp_path / "pseudo", _cfg())
    marker = read_marker(out)
    assert marker is not None and marker["kind"] == KIND and len(marker["checkpoint_sha256"]) == 64
    assert marker["rules"]["ignore_below"] == _cfg().stage1.pseudo.ignore_below
    with Image.open(out / "mask" / "p0.png") as im:
        assert im.mode == "P"
        assert tuple(im.getpalette()[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3]) == IGNORE_COLOR
        mask = np.asarray(im)
    assert set(np.unique(mask)) <= {0, 1, 2, 3, IGNORE_INDEX}
    assert (mask[:, SIZE // 2 + 2 :] == CLASSES.background_index).all()  # glass half is background


def test_new_checkpoint_rewrites_the_folder_fresh(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "data")
    out = export_pseudo_masks(_checkpoint(0), ds, tmp_path / "pseudo", _cfg())
    first = read_marker(out)["checkpoint_sha256"]
    stamp = (out / "mask" / "p0.png").stat().st_mtime_ns
    export_pseudo_masks(_checkpoint(0), ds, out, _cfg())  # same weights, rules, samples: nothing redone
    assert (out / "mask" / "p0.png").stat().st_mtime_ns == stamp
    (out / "mask" / "stale.png").write_bytes(b"old")  # left by an earlier export
    export_pseudo_masks(_checkpoint(1), ds, out, _cfg())
    assert read_marker(out)["checkpoint_sha256"] != first
    assert not (out / "mask" / "stale.png").exists()
    assert sorted(p.name for p in (out / "mask").iterdir()) == ["p0.png", "p1.png", "p2.png"]


def test_user_folder_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "data")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    for overwrite in (False, True):  # --overwrite replaces only what protoseg wrote
        with pytest.raises(OutputOwnershipError, match=r"mine/notes\.txt, not written by protoseg"):
            export_pseudo_masks(_checkpoint(0), ds, user, _cfg(), overwrite=overwrite)
        assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    other = tmp_path / "other"  # another protoseg output: replaced only with overwrite
    other.mkdir()
    (other / "a.txt").write_text("x")
    write_marker(other, "image-bank")
    with pytest.raises(OutputOwnershipError, match="holds a protoseg image-bank output"):
        export_pseudo_masks(_checkpoint(0), ds, other, _cfg())
    export_pseudo_masks(_checkpoint(0), ds, other, _cfg(), overwrite=True)
    assert read_marker(other)["kind"] == KIND and not (other / "a.txt").exists()
    (other / "notes.txt").write_text("added by the user")  # the user's now: even its own kind is refused
    with pytest.raises(OutputOwnershipError, match="notes.txt"):
        export_pseudo_masks(_checkpoint(1), ds, other, _cfg(), overwrite=True)
    assert (other / "notes.txt").exists()


def test_same_file_name_in_two_folders_gets_two_masks(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "data", folders=("x", "y"), n=2)
    keys = sample_keys(ds)
    assert keys == ["x__p0", "x__p1", "y__p0", "y__p1"]
    out = export_pseudo_masks(_checkpoint(0), ds, tmp_path / "pseudo", _cfg())
    assert len(list((out / "mask").glob("*.png"))) == 4
    pairs = PseudoMaskDataset(ds, out, augment=False)
    for i, key in enumerate(keys):
        want = np.asarray(Image.open(out / "mask" / f"{key}.png")).astype(np.int64)
        assert np.array_equal(pairs[i]["mask"].numpy(), want)


def test_stage2_refuses_unmarked_or_other_samples(tmp_path: Path) -> None:
    ds = _dataset(tmp_path / "data")
    old = tmp_path / "old"
    (old / "mask").mkdir(parents=True)
    (old / "pseudo.json").write_text("{}")
    with pytest.raises(PseudoMaskError, match="not a complete protoseg pseudo-mask folder"):
        PseudoMaskDataset(ds, old)
    out = export_pseudo_masks(_checkpoint(0), ds, tmp_path / "pseudo", _cfg())
    with pytest.raises(PseudoMaskError, match="other training patches"):
        PseudoMaskDataset(_dataset(tmp_path / "other", folders=("z",), n=2), out)


def test_validation_scores_exactly_the_exported_masks(tmp_path: Path) -> None:
    from protoseg.data.masks import load_mask, save_palette_mask
    from protoseg.metrics import ConfusionMatrix
    from protoseg.train.evaluation import evaluate_pseudo, flat_metrics

    ds = _dataset(tmp_path / "data", n=4)
    rng = np.random.default_rng(1)
    records = []
    for rec in ds.records:  # give each patch a ground-truth mask
        gt = rng.integers(0, 4, (SIZE, SIZE))
        save_palette_mask(rec.image.with_suffix(".mask.png"), gt, CLASSES)
        records.append(PatchRecord(image=rec.image, name=rec.name, mask=rec.image.with_suffix(".mask.png")))
    ds = PatchDataset(records, CLASSES)
    ckpt = _checkpoint(0)
    out = export_pseudo_masks(ckpt, ds, tmp_path / "pseudo", _cfg())
    cm = ConfusionMatrix(4, background_index=3, class_names=[*CLASSES.names, CLASSES.background_name])
    for rec in records:
        exported = np.asarray(Image.open(out / "mask" / f"{rec.name}.png")).astype(np.int64)
        cm.update(exported, load_mask(rec.mask, CLASSES))
    validated = evaluate_pseudo(ckpt.build_model(), ds, CLASSES, _cfg(), torch.device("cpu"))
    assert validated == pytest.approx(flat_metrics(cm.compute()))


def test_region_patches_are_named_by_slide_and_box_without_reading_pixels() -> None:
    from dataclasses import dataclass

    from torch.utils.data import Dataset

    @dataclass
    class Box:
        slide_path: str
        box: tuple[int, int, int, int]

    class Regions(Dataset):
        patches = (Box("/a/s1.svs", (0, 0, 8, 8)), Box("/b/s1.svs", (0, 0, 8, 8)), Box("/a/s2.svs", (8, 0, 8, 8)))

        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> dict:
            raise AssertionError("keys must not read pixels")

    assert sample_keys(Regions()) == ["a__s1_x0_y0", "b__s1_x0_y0", "a__s2_x8_y0"]
