"""Trivial baselines beside ``protoseg eval``: hand-computed values under both protocols, every layout's
masks, and the CLI's JSON and comparison line."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.classes import BCSS_WSSS, IGNORE_INDEX, ClassSpec
from protoseg.cli import main
from protoseg.data.masks import save_palette_mask
from protoseg.metrics import MetricsError
from protoseg.train.baselines import (
    comparison_line,
    count_masks,
    one_class_baseline,
    priority_fills,
    split_baselines,
    split_masks,
    tile_label_baseline,
    trivial_baselines,
)

AB = ClassSpec(("A", "B"))  # background = 2
#: 6 A, 1 B, 1 background (shares A .75, B .125) and 4 B, 3 background, 1 ignored (share B .5)
MASKS = [
    np.array([[0, 0, 0, 0], [0, 0, 1, 2]]),
    np.array([[1, 1, 1, 1], [2, 2, 2, IGNORE_INDEX]]),
]


def test_one_class_by_hand_under_both_protocols() -> None:
    # pbip, all A: IoU_A = 6 / 15, IoU_B = 0 -> 0.2 (all B: IoU_B = 5 / 15 -> 1/6); background counts
    pbip = one_class_baseline(count_masks(MASKS, AB, "pbip"), AB)
    assert pbip["class"] == "A" and pbip["uses_labels"] is False
    assert pbip["mIoU"] == pytest.approx(0.2)
    assert pbip["IoU_A"] == pytest.approx(0.4) and pbip["IoU_B"] == 0.0 and pbip["IoU_background"] == 0.0
    # tissue: background excluded, all A: IoU_A = 6 / 11 -> mIoU 3/11 (all B: 5/22)
    tissue = one_class_baseline(count_masks(MASKS, AB, "tissue"), AB)
    assert tissue["class"] == "A" and tissue["mIoU"] == pytest.approx(3 / 11)
    assert tissue["IoU_A"] == pytest.approx(6 / 11) and "IoU_background" not in tissue


def test_tile_label_by_hand_under_both_protocols() -> None:
    # present at 2 %: {A, B} and {B}; priority A>B fills A then B: pbip IoU_A 6/8, IoU_B 4/8
    pbip = tile_label_baseline(count_masks(MASKS, AB, "pbip"), AB, min_share=0.02)
    assert pbip["priority"] == ["A", "B"] and pbip["uses_labels"] is True
    assert pbip["mIoU"] == pytest.approx(0.625)
    assert pbip["IoU_A"] == pytest.approx(0.75) and pbip["IoU_B"] == pytest.approx(0.5)
    tissue = tile_label_baseline(count_masks(MASKS, AB, "tissue"), AB, min_share=0.02)
    assert tissue["mIoU"] == pytest.approx((6 / 7 + 4 / 5) / 2) and tissue["search"] == "exhaustive"


def test_tile_label_min_share_and_the_fallback_for_patches_without_labels() -> None:
    # at 60 % the second patch has no label (B covers 50 %): it gets the priority's first class, so B>A wins
    got = tile_label_baseline(count_masks(MASKS, AB, "pbip"), AB, min_share=0.6)
    assert got["priority"] == ["B", "A"] and got["mIoU"] == pytest.approx(0.625) and got["min_share"] == 0.6
    with pytest.raises(MetricsError):
        tile_label_baseline(count_masks(MASKS, AB), AB, min_share=1.5)


def test_priority_fills() -> None:
    present = np.array([[True, True, False], [False, False, True], [False, False, False]])
    assert priority_fills(present, (2, 1, 0)).tolist() == [1, 2, 2]
    assert priority_fills(present, (0, 1, 2)).tolist() == [0, 2, 0]


def test_many_classes_search_by_swaps_finds_the_perfect_priority() -> None:
    classes = ClassSpec(tuple(f"c{i}" for i in range(9)))
    masks = [np.full((2, 2), i % 9) for i in range(18)]  # single-class patches: any priority is perfect
    masks.append(np.array([[0, 0], [8, 8]]))  # needs c8 before c0 (or c0 before c8: IoU 1 impossible either way)
    got = tile_label_baseline(count_masks(masks, classes, "tissue"), classes)
    assert got["search"] == "pairwise swaps" and got["mIoU"] > 0.9


def test_masks_out_of_range_are_refused() -> None:
    with pytest.raises(MetricsError):
        count_masks([np.array([[0, 7]])], AB)


def test_comparison_line_names_the_model_and_both_baselines() -> None:
    base = trivial_baselines(count_masks(MASKS, AB, "tissue"), AB)
    line = comparison_line(0.412, base)
    assert line.startswith("mIoU 41.2 vs trivial (tissue protocol, 2 patches): one class everywhere (A) 27.3")
    assert line.endswith("each image one of its labels (label-gated, priority A>B) 82.9")


def _write_split(root: Path, masks: list[np.ndarray], classes: ClassSpec) -> None:
    for sub in ("img", "mask"):
        (root / "test" / sub).mkdir(parents=True, exist_ok=True)
    for i, m in enumerate(masks):
        rgb = np.full((*m.shape, 3), 200, np.uint8)
        rgb[m < classes.num_classes] = (180, 60, 150)
        Image.fromarray(rgb).save(root / "test" / "img" / f"p{i}.png")
        save_palette_mask(root / "test" / "mask" / f"p{i}.png", m, classes)


def test_split_baselines_read_masks_of_named_and_generic_layouts(tmp_path: Path) -> None:
    big = [np.kron(m, np.ones((8, 8), np.int64)) for m in MASKS]
    generic = tmp_path / "generic"
    _write_split(generic, big, AB)
    (generic / "classes.yaml").write_text("names: [A, B]\n")
    classes, paths = split_masks(generic, "test")
    assert classes.names == ("A", "B") and len(paths) == 2
    got = split_baselines(generic, "test", protocol="tissue")
    assert got["one_class"]["mIoU"] == pytest.approx(3 / 11) and got["patches"] == 2
    bcss = tmp_path / "bcss"
    _write_split(bcss, [np.where(m == 2, 4, m) for m in big], BCSS_WSSS)  # BCSS background is index 4
    tile = split_baselines(bcss, "test", protocol="pbip")["tile_label"]  # LYM, NEC absent: NaN, out of the mean
    assert tile["mIoU"] == pytest.approx(0.625) and "IoU_LYM" not in tile and tile["priority"][:2] == ["TUM", "STR"]


SIZE = 32
COMMON = ["--set", "run.device=cpu", "--set", "data.batch_size=4", "--set", f"data.patch_size={SIZE}"]


@pytest.fixture(scope="module")
def split_and_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A BCSS-WSSS test split of 4 hand-made masks and an untrained stage-2 checkpoint of its classes."""
    from protoseg.models import build_model
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint

    root = tmp_path_factory.mktemp("baselines") / "data"
    rng = np.random.default_rng(0)
    masks = []
    for i in range(4):
        m = np.full((SIZE, SIZE), i % 4)
        m[: SIZE // 4] = 4  # a background band
        m[rng.integers(0, SIZE, 40), rng.integers(0, SIZE, 40)] = (i + 1) % 4
        masks.append(m)
    _write_split(root, masks, BCSS_WSSS)
    torch.manual_seed(0)
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 5, "decoder_dim": 8, "weights": None}
    ckpt = Checkpoint(Stage.STAGE2, cfg, build_model(cfg).state_dict(), BCSS_WSSS, mpp=0.5, patch_size=SIZE)
    return root, save_checkpoint(ckpt, root.parent / "m.pt")


@pytest.mark.parametrize("protocol", ["pbip", "tissue"])
def test_cli_eval_prints_the_baselines_beside_the_model(split_and_checkpoint, capsys, caplog, protocol) -> None:
    root, ckpt = split_and_checkpoint
    args = ["eval", "--checkpoint", str(ckpt), "--data", str(root), "--protocol", protocol, "--json", *COMMON]
    with caplog.at_level(logging.INFO, logger="protoseg.cli.evaluate"):
        assert main(args) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["protocol"] == protocol and "mIoU" in out  # the model's keys are unchanged
    base = out["baselines"]
    from protoseg.data.masks import load_mask
    from protoseg.train.baselines import count_masks as count

    masks = [load_mask(p, BCSS_WSSS) for p in sorted((root / "test" / "mask").glob("*.png"))]
    assert base == json.loads(json.dumps(trivial_baselines(count(masks, BCSS_WSSS, protocol), BCSS_WSSS)))
    lines = [r for r in caplog.records if "vs trivial" in r.getMessage()]
    assert len(lines) == 1
    assert lines[0].getMessage().startswith(comparison_line(out["mIoU"], base))
    assert f"mIoU {100 * out['mIoU']:.1f} vs trivial ({protocol} protocol, 4 patches)" in lines[0].getMessage()


def test_cli_eval_no_baselines(split_and_checkpoint, capsys) -> None:
    root, ckpt = split_and_checkpoint
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(root), "--no-baselines", "--json", *COMMON]) == 0
    assert "baselines" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_a_model_not_above_the_fair_baseline_is_a_warning(split_and_checkpoint, caplog) -> None:
    from protoseg.cli.evaluate import _baselines
    from protoseg.config import load_config

    root, _ = split_and_checkpoint
    args = argparse.Namespace(split="test", protocol="tissue", use_labels=True, min_share=0.02)
    with caplog.at_level(logging.INFO, logger="protoseg.cli.evaluate"):
        base = _baselines(load_config(None, [f"data.root={root}"]), args, {"mIoU": 0.0})
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "no better than the trivial label-gated" in warned[0]
    assert base["tile_label"]["mIoU"] > 0


def test_labels_from_a_mask_at_a_share_are_the_tile_baselines_labels() -> None:
    from protoseg.data.masks import labels_from_mask

    m = np.zeros((10, 10), np.int64)
    m[0, :3] = 1  # 3 % of the patch
    m[1, 0] = 2  # 1 pixel of class 2
    m[9] = 3  # background
    assert labels_from_mask(m, 3).tolist() == [1, 1, 1]  # every class with a pixel
    assert labels_from_mask(m, 3, 0.02).tolist() == [1, 1, 0]
    assert labels_from_mask(m, 3, 0.05).tolist() == [1, 0, 0]
    counts = count_masks([m], ClassSpec(("A", "B", "C")), "tissue")
    assert ((counts.shares[0] >= 0.02) & (counts.shares[0] > 0)).tolist() == [True, True, False]


def test_eval_use_labels_gates_with_the_min_share_labels(tmp_path: Path, capsys, monkeypatch) -> None:
    """``eval --use-labels`` gates the CAMs with the classes covering ``--min-share`` of each mask, the labels
    the tile baseline uses; a class of a few stray pixels is no label unless ``--min-share 0``."""
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.models.classnet import ClassNet, ClassNetConfig
    from protoseg.models.factory import model_config
    from protoseg.train import evaluation

    root = tmp_path / "data"
    masks = []
    for i in range(3):
        m = np.full((SIZE, SIZE), i % 2)
        m[0, :4] = 1 - i % 2  # 4 stray pixels of the other class (0.4 %)
        masks.append(m)
    _write_split(root, masks, AB)
    (root / "classes.yaml").write_text("names: [A, B]\n")
    torch.manual_seed(0)
    net = ClassNet(ClassNetConfig(backbone="resnet18", head="cam", num_classes=2))
    ckpt = save_checkpoint(
        Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), AB, patch_size=SIZE), tmp_path / "s1.pt"
    )
    seen: list[torch.Tensor] = []
    real = evaluation.pseudo_masks

    def spy(model, images, labels, cfg):
        seen.append(labels.cpu())
        return real(model, images, labels, cfg)

    monkeypatch.setattr(evaluation, "pseudo_masks", spy)
    base = ["eval", "--checkpoint", str(ckpt), "--data", str(root), "--use-labels", "--json", "--no-baselines", *COMMON]
    for share, want in (("0.02", [[1, 0], [0, 1], [1, 0]]), ("0", [[1, 1]] * 3)):
        seen.clear()
        assert main([*base, "--min-share", share]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert out["label_min_share"] == float(share)
        assert torch.cat(seen).tolist() == want


def test_a_patch_where_no_class_reaches_the_share_keeps_its_classes_and_bad_shares_are_refused() -> None:
    from protoseg.data.errors import MaskError
    from protoseg.data.masks import labels_from_mask

    m = np.full((10, 10), 3)  # background
    m[0, 0], m[0, 1] = 0, 1  # two classes of one pixel each: tissue, but no class reaches 2 %
    assert labels_from_mask(m, 3, 0.02).tolist() == [1, 1, 0]
    with pytest.raises(MaskError, match="within 0..1"):
        labels_from_mask(m, 3, 1.5)
