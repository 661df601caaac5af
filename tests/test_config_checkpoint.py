"""Config parsing/overrides and checkpoint round-trip, atomicity and damaged-file errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from protoseg.classes import BCSS_WSSS
from protoseg.config import (
    AddOn,
    ConfigError,
    ProtosegConfig,
    Recipe,
    config_from_dict,
    load_config,
    save_config,
    to_dict,
)
from protoseg.config_compat import STAGE1_RENAMED
from protoseg.data.records import Layout
from protoseg.models.checkpoint import Checkpoint, CheckpointError, Stage, load_checkpoint, save_checkpoint
from protoseg.models.encoders import EncoderKind
from protoseg.models.factory import model_config
from protoseg.models.segnet import SegNet, SegNetConfig
from protoseg.train.configured import checkpoint_config


def test_overrides_and_yaml_round_trip(tmp_path: Path) -> None:
    cfg = load_config(
        None,
        [
            "stage1.recipe=lpd",
            "stage1.addons=[pscl,plim]",
            "stage1.epochs=3",
            "stage1.stage_weights=0,0,1,1",
            "run.mpp=0.5",
            "bank.encoder.kind=timm",
        ],
    )
    assert cfg.stage1.recipe is Recipe.LPD
    assert cfg.stage1.addons == (AddOn.PSCL, AddOn.PLIM)
    assert cfg.stage1.stage_weights == (0.0, 0.0, 1.0, 1.0)
    assert cfg.run.mpp == 0.5 and cfg.bank.encoder.kind == "timm"
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg
    assert load_config(tmp_path / "c.yaml", ["stage1.epochs=7"]).stage1.epochs == 7


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("stage1.epoch=3", "unknown key 'epoch'"),
        ("stage1.recipe=foo", "not one of"),
        ("stage1.epochs=abc", "expected int"),
        ("nosection.x=1", "no config section"),
        ("stage1.epochs", "section.key=value"),
    ],
)
def test_bad_overrides_say_what_is_wrong(override: str, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        load_config(None, [override])


def test_bad_yaml_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("stage1: {epochs: [1, 2}\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "typo.yaml").write_text("stage1:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"stage1\.lrr"):
        load_config(tmp_path / "typo.yaml")


def _tiny_checkpoint() -> tuple[Checkpoint, SegNet]:
    torch.manual_seed(0)
    net = SegNet(SegNetConfig(backbone="resnet18", num_classes=4, decoder_dim=16)).eval()
    ckpt = Checkpoint(
        stage=Stage.STAGE2,
        model_config=model_config(net),
        state_dict={k: v.clone() for k, v in net.state_dict().items()},
        classes=BCSS_WSSS,
        mpp=0.5,
        patch_size=64,
        epoch=3,
        step=30,
        metrics={"mIoU": 0.4},
        extra={"optimizer": {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}},
    )
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


#: The stage-1 section of a config written before the per-method sections (non-default values).
FLAT_STAGE1 = {
    "recipe": "lpd",
    "epochs": 4,
    "sim_weight": 0.7,
    "fg_weight": 0.9,
    "bg_weight": 0.4,
    "temperature": 0.2,
    "diversity_weight": 0.3,
    "diversity_warmup_epochs": 2.0,
    "diversity_temperature": 0.05,
    "pscl_weight": 0.2,
    "pscl_tau": 0.3,
    "pscl_temperature": 0.07,
    "pscl_max_pixels": 512,
    "plim_weights": [1.0, 2.0, 3.0],
    "plim_template": "an image of {}",
    "bg_threshold": 0.35,
    "bg_grey": 0.75,
    "bg_min_size": 100,
}


def _check_upgraded(s1) -> None:
    assert s1.recipe is Recipe.LPD and s1.epochs == 4
    assert (s1.similarity.weight, s1.similarity.fg_weight, s1.similarity.bg_weight, s1.similarity.temperature) == (
        0.7,
        0.9,
        0.4,
        0.2,
    )
    assert (s1.lpd.diversity_weight, s1.lpd.diversity_warmup_epochs, s1.lpd.diversity_temperature) == (0.3, 2.0, 0.05)
    assert (s1.pscl.weight, s1.pscl.tau, s1.pscl.temperature, s1.pscl.max_pixels) == (0.2, 0.3, 0.07, 512)
    assert s1.plim.weights == (1.0, 2.0, 3.0) and s1.plim.template == "an image of {}"
    # bg_threshold / bg_grey no longer apply (ignored with a warning); bg_min_size keeps its meaning
    assert s1.pseudo.bg_min_size == 100 and not hasattr(s1.pseudo, "bg_grey")


def test_old_flat_stage1_yaml_maps_into_sections(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    assert set(FLAT_STAGE1) >= set(STAGE1_RENAMED)
    path = tmp_path / "old.yaml"
    path.write_text(yaml.safe_dump({"stage1": FLAT_STAGE1, "run": {"seed": 3}}))
    with caplog.at_level("WARNING", logger="protoseg.config"):
        cfg = load_config(path)
    _check_upgraded(cfg.stage1)
    assert cfg.run.seed == 3
    assert "deprecated" in caplog.text and "stage1.bg_threshold" in caplog.text
    assert "stage1.pseudo.bg_threshold" in caplog.text and "no longer applies" in caplog.text
    # saving writes the new layout, which loads back without warnings
    save_config(cfg, tmp_path / "new.yaml")
    assert "pseudo" in yaml.safe_load((tmp_path / "new.yaml").read_text())["stage1"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="protoseg.config"):
        assert load_config(tmp_path / "new.yaml") == cfg
    assert "deprecated" not in caplog.text


def test_old_flat_overrides_still_work(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="protoseg.config"):
        cfg = load_config(None, ["stage1.bg_min_size=40", "stage1.pscl_tau=0.1", "stage1.plim_weights=1,1,1"])
    assert cfg.stage1.pseudo.bg_min_size == 40 and cfg.stage1.pscl.tau == 0.1
    assert cfg.stage1.plim.weights == (1.0, 1.0, 1.0)
    assert "stage1.pscl_tau" in caplog.text and "stage1.pscl.tau" in caplog.text
    assert load_config(None, ["stage1.pseudo.bg_min_size=40"]).stage1.pseudo == cfg.stage1.pseudo


def test_pseudo_keys_that_no_longer_apply_load_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="protoseg.config"):
        cfg = load_config(None, ["stage1.bg_threshold=0.4", "stage1.pseudo.bg_grey=0.9"])
        old = config_from_dict({"stage1": {"pseudo": {"bg_threshold": 0.3, "bg_grey": 0.8, "bg_min_size": 50}}})
    assert cfg.stage1.pseudo == load_config().stage1.pseudo  # nothing silently re-purposed
    assert old.stage1.pseudo.bg_min_size == 50
    assert caplog.text.count("no longer applies") >= 4 and "glass detector" in caplog.text


def test_old_and_new_key_together_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"stage1.bg_min_size .*stage1.pseudo.bg_min_size"):
        config_from_dict({"stage1": {"bg_min_size": 30, "pseudo": {"bg_min_size": 20}}})


def test_checkpoint_with_flat_stage1_config_still_loads(tmp_path: Path) -> None:
    ckpt, _ = _tiny_checkpoint()
    old = to_dict(ProtosegConfig())
    old["stage1"] = {
        k: v for k, v in old["stage1"].items() if k not in ("similarity", "lpd", "pscl", "plim", "pseudo")
    } | FLAT_STAGE1
    path = save_checkpoint(ckpt.with_updates(train_config=old), tmp_path / "old.pt")
    back = load_checkpoint(path)
    assert back.train_config["stage1"]["bg_threshold"] == 0.35  # stored as written
    _check_upgraded(checkpoint_config(back).stage1)
    new = ckpt.with_updates(train_config=to_dict(ProtosegConfig()))
    assert checkpoint_config(load_checkpoint(save_checkpoint(new, tmp_path / "new.pt"))) == ProtosegConfig()


def test_layout_and_encoder_kind_are_their_enums() -> None:
    cfg = load_config(None, ["data.layout=luad_histoseg", "bank.encoder.kind=open_clip"])
    assert cfg.data.layout is Layout.LUAD_HISTOSEG and cfg.bank.encoder.kind is EncoderKind.OPEN_CLIP
    assert ProtosegConfig().bank.encoder.kind is EncoderKind.DESCRIPTOR and ProtosegConfig().data.layout is None
    assert load_config(None, ["data.layout=null"]).data.layout is None
    assert to_dict(cfg)["data"]["layout"] == "luad_histoseg"


@pytest.mark.parametrize(
    "override, allowed",
    [
        ("data.layout=bcss", "['bcss_wsss', 'luad_histoseg', 'generic']"),
        ("bank.encoder.kind=clip", "['descriptor', 'open_clip', 'timm']"),
        ("stage1.similarity.masking=blur", "['fill', 'weights']"),
    ],
)
def test_bad_enum_value_names_key_and_choices(override: str, allowed: str) -> None:
    key, value = override.split("=")
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value) == f"{key}: {value!r} is not one of {allowed}"


def test_config_module_does_not_import_torch() -> None:
    code = "import sys, protoseg.config; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
