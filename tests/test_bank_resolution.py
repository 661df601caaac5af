"""A bank records the resolution its folder patches were embedded at; training at another one says so."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.bank import BankSample, build_bank, load_bank, save_bank
from protoseg.bank.errors import BankError, BankFormatError
from protoseg.classes import ClassSpec
from protoseg.config import load_config
from protoseg.data.synthetic.writers import write_bcss_dataset
from protoseg.models.encoders.descriptor import HEDescriptor
from protoseg.train.pipeline import build_bank_from_config, train_stage1

torch.set_num_threads(2)
SPEC = ClassSpec(names=("A", "B"))


def _bank(scale: float | None, mpp: float | None = None):
    rng = np.random.default_rng(0)
    samples = [
        BankSample(
            np.clip(np.array(base) + rng.integers(-30, 31, (64, 64, 3)), 0, 255).astype(np.uint8),
            tuple(int(j == c) for j in range(2)),
            f"{c}-{i}",
            mpp=mpp,
        )
        for c, base in enumerate(((200, 60, 90), (60, 40, 150)))
        for i in range(3)
    ]
    return build_bank(samples, SPEC, HEDescriptor(input_size=64), k=1, n_per_cluster=3, data_scale=scale)


def test_scale_is_recorded_loaded_and_compared(tmp_path: Path) -> None:
    bank = _bank(0.5)
    folder = save_bank(bank, tmp_path / "bank")
    assert json.loads((folder / "manifest.json").read_text())["data_scale"] == 0.5
    loaded = load_bank(folder)
    assert loaded.data_scale == 0.5
    assert loaded.resolution_mismatch(0.5, None) is None
    assert "resampled by 0.5 (data.scale)" in (loaded.resolution_mismatch(1.0, None) or "")
    assert loaded.resolution_mismatch(None, None) is None  # slide-region training: no folder scale to compare
    # members read from slides record their mpp: compared with the training patches' (10 % tolerance)
    slide_bank = _bank(None, mpp=0.5)
    assert slide_bank.resolution_mismatch(None, 0.52) is None
    assert "0.5 µm/px" in (slide_bank.resolution_mismatch(None, 1.0) or "")
    # banks saved before the scale was recorded load as unknown; nonsense is refused with the file named
    data = json.loads((folder / "manifest.json").read_text())
    del data["data_scale"]
    (folder / "manifest.json").write_text(json.dumps(data))
    assert load_bank(folder).data_scale is None
    data["data_scale"] = -1
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BankFormatError, match="data_scale"):
        load_bank(folder)
    with pytest.raises(BankError, match="data_scale"):
        bank.replace(data_scale=float("nan"))


def test_training_at_another_scale_than_the_bank_warns(tmp_path: Path, caplog) -> None:
    """A bank built from the folder at data.scale 1 and PBIP trained at 0.5: one warning naming both scales and
    how to rebuild; the same scale trains without it."""
    root = write_bcss_dataset(tmp_path / "data", n_train=40, n_val=0, n_test=0, size=64, seed=0)
    common = [
        f"data.root={root}",
        "data.patch_size=64",
        "model.backbone=test_convnext",
        "model.projector_hidden=16",
        "run.device=cpu",
        "data.batch_size=20",
        "bank.k=1",
        "bank.n_per_cluster=2",
        "stage1.warm_start=none",
    ]
    bank = build_bank_from_config(load_config(None, common), tmp_path / "bank")
    assert bank.data_scale == 1.0
    for scale, warned in ((0.5, True), (1.0, False)):
        cfg = load_config(
            None,
            [
                *common,
                f"data.scale={scale}",
                "stage1.recipe=pbip",
                "stage1.epochs=1",
                f"bank.path={tmp_path / 'bank'}",
                f"run.out_dir={tmp_path / f'run{scale}'}",
            ],
        )
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="protoseg.train.bank_setup"):
            train_stage1(cfg)
        msgs = [r.getMessage() for r in caplog.records if "image bank" in r.getMessage()]
        if warned:
            assert len(msgs) == 1, msgs
            assert "resampled by 1 (data.scale)" in msgs[0] and "training resamples them by 0.5" in msgs[0]
            assert "--set data.scale=0.5" in msgs[0] and "Folder patches × (resample)" in msgs[0]
        else:
            assert not msgs, msgs
