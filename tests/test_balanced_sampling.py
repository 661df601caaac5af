"""Class-balanced sampling (issue 24, ``stage1.sampling`` / ``stage2.sampling=balanced``): patches drawn with
replacement so each image-level class is drawn about equally often, in either stage and under DDP; uniform stays
one pass per epoch; a resume with the other sampling is refused."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from protoseg.config import ConfigError, Sampling, load_config
from protoseg.train.errors import TrainingError
from protoseg.train.pipeline import make_pseudo_masks, train_stage1, train_stage2
from protoseg.train.sampling import (
    MAX_OVERSAMPLING,
    KeyedDistributedSampler,
    KeyedRandomSampler,
    balanced_weights,
    sample_labels,
    training_sampler,
)
from tiny_models import TINY_CPU_RUN


def _class_shares(labels: np.ndarray, draws: list[int]) -> np.ndarray:
    held = labels[np.asarray(draws)] > 0
    return held.sum(axis=0) / held.sum()


def test_balanced_weights_equalise_classes() -> None:
    labels = np.array([[1, 0, 0]] * 6 + [[1, 1, 0]] * 2 + [[0, 0, 1]] + [[0, 0, 0]], dtype=np.float32)
    w = balanced_weights(labels)
    share = labels.astype(bool).mean(axis=0)  # 0.8, 0.2, 0.1
    assert w[0] == pytest.approx(1 / share[0]) and w[6] == pytest.approx(1 / share[1])  # a pair: its rarer class
    assert w[8] == pytest.approx(1 / share[2])
    assert w[9] == pytest.approx(1 / share[0])  # no class: weighs as the most common class's patches
    drawn = (labels.astype(bool) * w[:, None]).sum(axis=0) / w.sum()
    assert drawn[2] > 3 * share[2]  # a patch with the rare class is drawn over 3x as often as uniformly
    with pytest.raises(ValueError, match="patches, classes"):
        balanced_weights(np.zeros(4))
    skewed = np.array([[1, 0]] * 99 + [[0, 1]], dtype=np.float32)  # one patch of a class: at most 10x
    w = balanced_weights(skewed)
    assert w[-1] == pytest.approx(MAX_OVERSAMPLING * w[0])


def test_weighted_sampler_draws_in_proportion_and_uniform_is_a_permutation() -> None:
    labels = np.array([[1, 0]] * 9 + [[0, 1]], dtype=np.float32)
    gen = torch.Generator().manual_seed(0)
    uniform = KeyedRandomSampler(10, gen)
    keys = list(uniform)
    assert sorted(int(k) for k in keys) == list(range(10)) and len({k.seed for k in keys}) == 10
    sampler = KeyedRandomSampler(10, torch.Generator().manual_seed(0), balanced_weights(labels))
    draws = [int(k) for _ in range(400) for k in sampler]  # 400 epochs of 10 draws
    assert len(draws) == 4000
    assert _class_shares(labels, draws)[1] == pytest.approx(0.5, abs=0.04)  # 10 % of patches, half the draws
    again = KeyedRandomSampler(10, torch.Generator().manual_seed(0), balanced_weights(labels))
    assert [int(k) for k in again] == draws[:10]  # the data-order generator alone decides (resumable)
    with pytest.raises(ValueError, match="sample weights for 10 samples"):
        KeyedRandomSampler(10, gen, np.ones(3))


class _Labelled(Dataset):
    def __init__(self, labels: np.ndarray) -> None:
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, i: int) -> int:
        return i

    def labels(self) -> np.ndarray:
        return self._labels


class _Pairs(Dataset):
    """Like stage 2's PseudoMaskDataset: pairs the patches of ``images``."""

    def __init__(self, images: Dataset) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> int:
        return i


def test_distributed_ranks_share_one_weighted_draw() -> None:
    labels = np.array([[1, 0]] * 7 + [[0, 1]], dtype=np.float32)
    ds = _Labelled(labels)
    w = balanced_weights(labels)
    ranks = [KeyedDistributedSampler(ds, num_replicas=2, rank=r, shuffle=True, seed=3, weights=w) for r in (0, 1)]
    for s in ranks:
        s.set_epoch(5)
    a, b = ([int(k) for k in s] for s in ranks)
    assert len(a) == len(b) == 4
    again = KeyedDistributedSampler(ds, num_replicas=2, rank=0, shuffle=True, seed=3, weights=w)
    again.set_epoch(5)
    assert [int(k) for k in again] == a  # a pure function of (seed, epoch): every rank agrees
    many = []
    for epoch in range(300):
        for s in ranks:
            s.set_epoch(epoch)
        many += [int(k) for s in ranks for k in s]
    assert _class_shares(labels, many)[1] == pytest.approx(0.5, abs=0.05)
    plain = training_sampler(ds, torch.Generator(), 3, distributed=False)
    assert isinstance(plain, KeyedRandomSampler) and plain.weights is None


def test_sample_labels_unwraps_subsets_and_pseudo_mask_pairs() -> None:
    labels = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    ds = _Labelled(labels)
    assert np.array_equal(sample_labels(ds), labels)
    assert np.array_equal(sample_labels(Subset(ds, [3, 1])), labels[[3, 1]])
    assert np.array_equal(sample_labels(_Pairs(Subset(ds, [2]))), labels[[2]])
    assert sample_labels(_Pairs(torch.utils.data.TensorDataset(torch.zeros(2)))) is None


def _folder(root: Path, size: int = 32) -> Path:
    """Generic layout, 5 TE patches and 1 NOR patch; val with masks."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [TE, NOR]\n")
    rows = ["path,TE,NOR"]
    for i in range(6):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "train" / f"p{i}.png")
        rows.append(f"p{i}.png,{int(i < 5)},{int(i == 5)}")
    (root / "train" / "labels.csv").write_text("\n".join(rows) + "\n")
    for kind in ("img", "mask"):
        (root / "val" / kind).mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "val" / "img" / "v.png")
    Image.fromarray(np.zeros((size, size), np.uint8)).save(root / "val" / "mask" / "v.png")
    return root


def _cfg(root: Path, out: Path, sampling: str, epochs: int = 1, sampling2: str = "uniform"):
    return load_config(
        None,
        [
            f"data.root={root}",
            f"stage1.sampling={sampling}",
            f"stage2.sampling={sampling2}",
            "data.batch_size=2",
            *TINY_CPU_RUN,
            f"stage1.epochs={epochs}",
            "stage2.epochs=1",
            f"run.out_dir={out}",
        ],
    )


def test_both_stages_sample_balanced_and_resume_refuses_the_other_sampling(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    cfg = _cfg(root, out, "balanced", sampling2="balanced")
    assert cfg.stage1.sampling is Sampling.BALANCED and _cfg(root, out, "uniform").stage2.sampling is Sampling.UNIFORM
    with caplog.at_level(logging.INFO, logger="protoseg"):
        ckpt1 = train_stage1(cfg).last
        train_stage2(cfg, make_pseudo_masks(cfg, ckpt1), stage1=ckpt1)
    said = [r.getMessage() for r in caplog.records if "class-balanced sampling" in r.getMessage()]
    assert len(said) == 2  # stage 1 and stage 2 (labels of the patches its pseudo-masks pair)
    assert [m.split("(")[1].split("=")[0] for m in said] == ["stage1.sampling", "stage2.sampling"]
    assert all("TE 50%, NOR 50% (uniform: TE 83%, NOR 17%)" in m for m in said)
    with pytest.raises(
        TrainingError,
        match=r"stage1.sampling 'balanced' vs 'uniform' \(to resume: --set stage1.sampling=balanced; Train dock: "
        r"'Balance classes' on\)",
    ):
        train_stage1(_cfg(root, out, "uniform", epochs=2), resume=True)
    with pytest.raises(ConfigError, match="stage1.sampling: 'rare' is not one of"):
        _cfg(root, out, "rare")


def test_cli_sampling_flag_reaches_the_checkpoint(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from protoseg.cli import main
    from protoseg.models.checkpoint import load_checkpoint

    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    common = ["--set", "model.backbone=resnet18", "--set", "model.weights=null", "--set", "data.num_workers=0"]
    common += ["--warm-start", "none"]
    argv = ["train", "stage1", "--data", str(root), "--out", str(out), "--recipe", "cam", "--epochs", "1"]
    with caplog.at_level(logging.INFO, logger="protoseg"):
        assert main([*argv, "--sampling", "balanced", "--batch-size", "2", "--device", "cpu", *common]) == 0
    assert load_checkpoint(out / "stage1" / "last.pt").train_config["stage1"]["sampling"] == "balanced"
    assert any("stage1.sampling=balanced" in r.getMessage() for r in caplog.records)
