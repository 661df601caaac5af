"""Config parsing/overrides and checkpoint round-trip, atomicity and damaged-file errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protoseg.classes import BCSS_WSSS
from protoseg.config import AddOn, ConfigError, ProtosegConfig, Recipe, load_config, save_config
from protoseg.models.factory import model_config
from protoseg.models.segnet import SegNet, SegNetConfig
from protoseg.models.checkpoint import Checkpoint, CheckpointError, Stage, load_checkpoint, save_checkpoint


def test_overrides_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(None, ["stage1.recipe=lpd", "stage1.addons=[pscl,plim]", "stage1.epochs=3",
                             "stage1.stage_weights=0,0,1,1", "run.mpp=0.5", "bank.encoder.kind=timm"])
    assert cfg.stage1.recipe is Recipe.LPD
    assert cfg.stage1.addons == (AddOn.PSCL, AddOn.PLIM)
    assert cfg.stage1.stage_weights == (0.0, 0.0, 1.0, 1.0)
    assert cfg.run.mpp == 0.5 and cfg.bank.encoder.kind == "timm"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(tmp_path / "c.yaml", ["stage1.epochs=7"]).stage1.epochs == 7


@pytest.mark.parametrize(
    "override, fragment",
    [("stage1.epoch=3", "unknown key 'epoch'"), ("stage1.recipe=foo", "not one of"),
     ("stage1.epochs=abc", "expected int"), ("nosection.x=1", "no config section"), ("stage1.epochs", "section.key=value")],
)
def test_bad_overrides_say_what_is_wrong(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("stage1: {epochs: [1, 2}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("stage1:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match="stage1.lrr"):
        load_config(tmp_path / "typo.yaml")


def _tiny_checkpoint() -> tuple[Checkpoint, SegNet]:
    torch.manual_seed(0)
    net = SegNet(SegNetConfig(backbone="resnet18", num_classes=4, decoder_dim=16)).eval()
    ckpt = Checkpoint(stage=Stage.STAGE2, model_config=model_config(net),
                      state_dict={k: v.clone() for k, v in net.state_dict().items()}, classes=BCSS_WSSS,
                      mpp=0.5, patch_size=64, epoch=3, step=30, metrics={"mIoU": 0.4},
                      extra={"optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}})
    return ckpt, net


def test_checkpoint_round_trip_rebuilds_identical_model(tmp_path: Path) -> None:
    ckpt, net = _tiny_checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "sub" / "model.pt")
    assert not list(path.parent.glob(".*tmp"))  # no temp file left behind
    back = load_checkpoint(path)
    assert back.classes == BCSS_WSSS and back.mpp == 0.5 and back.epoch == 3 and back.metrics == {"mIoU": 0.4}
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(back.build_model()(x), net(x))


def test_damaged_checkpoints_give_clear_errors(tmp_path: Path) -> None:
    ckpt, _ = _tiny_checkpoint()
    good = save_checkpoint(ckpt, tmp_path / "good.pt")
    data = good.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "noise.pt").write_bytes(bytes(range(256)) * 40)
    for name in ("trunc.pt", "noise.pt"):
        with pytest.raises(CheckpointError, match="truncated or damaged"):
            load_checkpoint(tmp_path / name)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not a protoseg checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


def test_failed_write_keeps_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ckpt, _ = _tiny_checkpoint()
    path = save_checkpoint(ckpt, tmp_path / "m.pt")
    before = path.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("protoseg.models.checkpoint.os.replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(ckpt.with_updates(epoch=9), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_default_config_is_pbip() -> None:
    assert ProtosegConfig().stage1.recipe is Recipe.PBIP
