"""The bank encoder's input size belongs to the bank: a bank built at one size trains at any patch size."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.bank import BankSample, add_member, build_bank, load_bank, save_bank
from protoseg.bank.encoder_lookup import encoder_for_bank, spec_from_encoder_id
from protoseg.bank.errors import BankCurationError, BankError, BankFormatError
from protoseg.classes import BCSS_WSSS, ClassSpec
from protoseg.config import load_config
from protoseg.data.synthetic.writers import write_bcss_dataset
from protoseg.models.checkpoint import load_checkpoint
from protoseg.models.encoders.descriptor import HEDescriptor
from protoseg.train.pipeline import train_stage1
from protoseg.train.stage1 import encoder_from_config

torch.set_num_threads(2)
SPEC = ClassSpec(names=("A", "B"))


def _samples(size: int) -> list[BankSample]:
    rng = np.random.default_rng(0)
    out = []
    for c, base in enumerate(((200, 60, 90), (60, 40, 150))):
        for i in range(3):
            image = np.clip(np.array(base) + rng.integers(-30, 31, (size, size, 3)), 0, 255).astype(np.uint8)
            out.append(BankSample(image, tuple(int(j == c) for j in range(2)), f"{c}-{i}"))
    return out


def test_bank_records_encoder_input_size_and_rebuilds_it(tmp_path: Path) -> None:
    bank = build_bank(_samples(48), SPEC, HEDescriptor(input_size=64), k=1, n_per_cluster=3)
    assert bank.encoder_input_size == 64 and bank.encoder_id == "he-descriptor-v1@64px"
    folder = save_bank(bank, tmp_path / "bank")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["encoder_input_size"] == 64
    loaded = load_bank(folder)
    assert loaded.encoder_input_size == 64
    enc = encoder_for_bank(loaded)
    assert (enc.encoder_id, enc.input_size) == ("he-descriptor-v1@64px", 64)
    # whatever the config's patch size / encoder size, the bank's encoder is used
    cfg = load_config(None, ["data.patch_size=160", "bank.encoder.input_size=96"])
    assert encoder_from_config(cfg, loaded).input_size == 64
    assert encoder_from_config(cfg).input_size == 96  # without a bank: the configured encoder
    # a member embedded at another size would not be comparable
    with pytest.raises(BankCurationError, match="64 px"):
        add_member(replace(loaded, encoder_id="x"), _samples(8)[0].image, 0, _Fake("x", 32))
    grown = add_member(loaded, _samples(200)[0].image, 0, enc)  # any crop size: resized for the encoder
    assert len(grown) == len(loaded) + 1


class _Fake(HEDescriptor):
    def __init__(self, encoder_id: str, size: int) -> None:
        super().__init__(input_size=64)
        self.encoder_id, self.input_size = encoder_id, size


def test_old_manifest_without_size_and_bad_size(tmp_path: Path) -> None:
    folder = save_bank(build_bank(_samples(64), SPEC, HEDescriptor(input_size=64), k=1), tmp_path / "b")
    data = json.loads((folder / "manifest.json").read_text())
    del data["encoder_input_size"]
    (folder / "manifest.json").write_text(json.dumps(data))
    old = load_bank(folder)
    assert old.encoder_input_size is None and encoder_for_bank(old).input_size == 64  # from the id
    data["encoder_input_size"] = -3
    (folder / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(BankFormatError, match="encoder_input_size"):
        load_bank(folder)


def test_timm_spec_takes_recorded_size_and_local_weights_need_a_path() -> None:
    assert spec_from_encoder_id("timm:resnet50@random-seed0", 160).input_size == 160
    assert spec_from_encoder_id("he-descriptor-v1@96px", 224).input_size == 96  # the id wins for the descriptor
    with pytest.raises(BankError, match="bank.encoder.pretrained"):
        spec_from_encoder_id("timm:resnet50@file:w.pth:123", 224)


def test_bank_built_at_one_size_trains_stage1_at_another(tmp_path: Path) -> None:
    """The napari bank widget builds at the default size; training at another patch size must still work."""
    root = write_bcss_dataset(tmp_path / "data", n_train=12, n_val=0, n_test=0, size=96, seed=1)
    common = ["model.backbone=test_convnext", "model.projector_hidden=16", "run.device=cpu", "data.batch_size=4"]
    common.append("stage1.warm_start=none")
    build_cfg = load_config(None, [*common, "data.patch_size=64"])
    rng = np.random.default_rng(0)
    samples = [  # single-class colour patches per BCSS class (the small synthetic set has few single-class ones)
        BankSample(
            np.clip(np.array(base) + rng.integers(-30, 31, (64, 64, 3)), 0, 255).astype(np.uint8),
            tuple(int(j == c) for j in range(4)),
            f"{c}-{i}",
        )
        for c, base in enumerate(((200, 60, 90), (230, 150, 190), (60, 40, 150), (150, 120, 130)))
        for i in range(2)
    ]
    bank = build_bank(samples, BCSS_WSSS, encoder_from_config(build_cfg), k=1, n_per_cluster=2)
    save_bank(bank, tmp_path / "bank")
    assert bank.encoder_id == "he-descriptor-v1@64px" and bank.encoder_input_size == 64
    train_cfg = load_config(
        None,
        [
            *common,
            f"data.root={root}",
            "data.patch_size=96",  # before: 'bank was built with encoder he-descriptor-v1@64px but ... @96px'
            "stage1.recipe=pbip",
            "stage1.epochs=1",
            f"bank.path={tmp_path / 'bank'}",
            f"run.out_dir={tmp_path / 'run'}",
        ],
    )
    result = train_stage1(train_cfg)
    ckpt = load_checkpoint(result.last)
    assert ckpt.extra.get("encoder_id") == "he-descriptor-v1@64px"
