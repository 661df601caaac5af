"""Paper defaults (issue 10): auto ImageNet weights with an offline fallback, stage-4 stride 16, delta on the
raw similarity map, full-name PLIM prompts, shipped presets and the PSCL pixel decoder. Tiny models, offline."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
import yaml

from protoseg.config import ConfigError, ProtosegConfig, load_config
from protoseg.losses.plim import LossInputError, prompt_names
from protoseg.losses.similarity import adaptive_masks, fg_bg_images
from protoseg.models import ClassNet, ClassNetConfig, SegNet, SegNetConfig
from protoseg.models import backbone as bb
from protoseg.models.backbone import BackboneError, WeightsKind, build_backbone, planned_weights
from protoseg.models.heads import FpnPixelDecoder
from protoseg.presets import PresetError, list_presets, load_preset, preset_dict, preset_text

PRESETS = ["lpd-bcss", "pbip-bcss", "pbip-luad", "plim-bcss", "pscl-bcss"]


# ----------------------------------------------------------------------------- weights "auto"


@pytest.fixture
def no_download(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record every timm.create_model call's ``pretrained`` flag; a pretrained call raises (no network)."""
    import timm

    real, calls = timm.create_model, []

    def fake(name, pretrained=False, **kw):
        calls.append(bool(pretrained))
        if pretrained and "pretrained_cfg_overlay" not in kw:
            raise OSError("network unreachable")
        return real(name, pretrained=pretrained, **kw)

    monkeypatch.setattr(timm, "create_model", fake)
    monkeypatch.setattr(bb, "cached_pretrained_file", lambda name: None)
    return calls


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == bb.__name__]


def test_auto_offline_env_falls_back_with_one_warning(no_download, monkeypatch, caplog):
    monkeypatch.setenv("PROTOSEG_OFFLINE", "1")
    monkeypatch.setattr(bb, "hub_reachable", lambda timeout=0: pytest.fail("offline must not probe the network"))
    with caplog.at_level(logging.INFO, logger=bb.__name__):
        net = build_backbone("resnet18", "auto")
    assert net.weights_info.kind is WeightsKind.FALLBACK and not net.weights_info.pretrained
    assert no_download == [False]  # never asked timm for pretrained weights
    (msg,) = _warnings(caplog)
    assert "random init" in msg and "model.weights" in msg and "timm/resnet18" in msg
    assert "no ImageNet weights" in net.weights_info.describe()


def test_auto_unreachable_hub_and_failed_download_fall_back(no_download, monkeypatch, caplog):
    monkeypatch.delenv("PROTOSEG_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(bb, "hub_reachable", lambda timeout=0: False)
    with caplog.at_level(logging.WARNING, logger=bb.__name__):
        assert build_backbone("resnet18", "auto").weights_info.kind is WeightsKind.FALLBACK
    assert no_download == [False] and len(_warnings(caplog)) == 1
    caplog.clear()
    no_download.clear()
    monkeypatch.setattr(bb, "hub_reachable", lambda timeout=0: True)  # reachable, but the download fails
    with caplog.at_level(logging.WARNING, logger=bb.__name__):
        assert build_backbone("resnet18", "auto").weights_info.kind is WeightsKind.FALLBACK
    assert no_download == [True, False] and len(_warnings(caplog)) == 1


def test_hub_still_raises_and_random_is_quiet(no_download, monkeypatch, caplog):
    with pytest.raises(bb.WeightsError, match="model.weights"):
        build_backbone("resnet18", "hub")
    with caplog.at_level(logging.INFO, logger=bb.__name__):
        for value in (None, "random", "none"):
            assert build_backbone("resnet18", value).weights_info.kind is WeightsKind.RANDOM
    assert _warnings(caplog) == []
    assert planned_weights("resnet18", None).kind is WeightsKind.RANDOM


def _fake_hf_cache(root: Path, state: dict[str, torch.Tensor]) -> Path:
    """The Hugging Face hub cache layout for timm/resnet18.a1_in1k with one snapshot."""
    from safetensors.torch import save_file

    repo = root / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(snap / "model.safetensors"))
    return snap / "model.safetensors"


def test_auto_loads_imagenet_weights_from_local_cache(tmp_path, monkeypatch):
    import timm
    from huggingface_hub import constants

    torch.manual_seed(3)
    reference = timm.create_model("resnet18")
    path = _fake_hf_cache(tmp_path, reference.state_dict())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(bb, "hub_reachable", lambda timeout=0: pytest.fail("a cache hit needs no network"))
    assert bb.cached_pretrained_file("resnet18") == path
    assert planned_weights("resnet18", "auto").kind is WeightsKind.CACHE
    net = ClassNet(ClassNetConfig(backbone="resnet18", weights="auto", head="cam", num_classes=2))
    assert net.weights_info.kind is WeightsKind.CACHE and net.weights_info.source == str(path)
    assert net.weights_info.describe() == "resnet18: ImageNet weights (local cache)"
    assert torch.equal(net.backbone.model.conv1.weight, reference.conv1.weight)


def test_local_file_weights_are_reported(tmp_path):
    import timm

    path = tmp_path / "imagenet.pth"
    torch.save(timm.create_model("resnet18").state_dict(), path)
    seg = SegNet(SegNetConfig(backbone="resnet18", weights=str(path), num_classes=2, decoder_dim=8))
    assert seg.weights_info.kind is WeightsKind.FILE and seg.weights_info.pretrained
    assert seg.weights_info.describe() == "resnet18: weights from imagenet.pth"


def test_run_config_defaults_are_the_papers():
    cfg = ProtosegConfig()
    assert cfg.model.weights == "auto" and cfg.stage2.weights == "auto"
    assert cfg.model.output_stride == 16
    assert cfg.stage1.lpd.diversity_temperature == 1.0
    assert load_config(None, ["model.weights=null"]).model.weights is None


# ----------------------------------------------------------------------------- stride 16


def test_pvt_v2_stride16_gives_14x14_cams_at_224():
    net = ClassNet(ClassNetConfig(backbone="pvt_v2_b0", head="cam", num_classes=4, output_stride=16))
    assert net.backbone.reductions == (4, 8, 16, 16) and net.backbone.output_stride == 16
    with torch.no_grad():
        out = net.eval()(torch.rand(1, 3, 224, 224))
    assert out.maps[-1].shape == (1, 4, 14, 14)
    assert [f.shape[-1] for f in out.features] == [56, 28, 14, 14]
    default = build_backbone("pvt_v2_b0")  # stride 32 stays available, same parameters
    assert default.reductions == (4, 8, 16, 32)
    assert default.model.state_dict().keys() == net.backbone.model.state_dict().keys()


def test_resnet_stride16_and_unsupported_backbone():
    net = build_backbone("resnet18", output_stride=16)
    assert [f.shape[-1] for f in net(torch.rand(1, 3, 64, 64))] == [16, 8, 4, 4]
    with pytest.raises(BackboneError, match="output_stride"):
        build_backbone(
            "swin_tiny_patch4_window7_224",
            output_stride=16,
            img_size=64,
            window_size=4,
            embed_dim=8,
            depths=(1, 1, 1, 1),
            num_heads=(1, 1, 1, 1),
        )
    with pytest.raises(BackboneError, match="output_stride"):
        build_backbone("resnet18", output_stride=8)


# ----------------------------------------------------------------------------- delta, prompts


def test_delta_thresholds_the_raw_similarity_map():
    raw = torch.tensor([2.0, 3.0, 4.0]).view(1, 1, 1, 3)  # scaled cosines, all positive
    normalised = (raw - raw.min()) / (raw.max() - raw.min())  # [0, 0.5, 1]
    _, b_norm = adaptive_masks(normalised, (1, 3), delta=0.6)
    m_up, b_raw = adaptive_masks(normalised, (1, 3), delta=0.6, raw=raw)
    assert b_norm.flatten().tolist() == [False, False, True]
    assert b_raw.flatten().tolist() == [False, True, True]  # 3 >= 0.6 * 4
    assert torch.equal(m_up, normalised)  # the soft weight stays the normalised CAM
    batch = fg_bg_images(torch.ones(1, 3, 1, 3), normalised, torch.ones(1, 1), 0.6, raw=raw)
    assert batch.x_fg[0, 0].flatten().tolist() == [0.0, 0.5, 1.0]


def test_plim_prompts_use_full_class_names():
    assert prompt_names(("TUM", "STR", "LYM", "NEC")) == ["tumor", "stroma", "lymphocytic infiltrate", "necrosis"]
    assert prompt_names(("TE", "NEC", "LYM", "TAS"))[0] == "tumor epithelium"
    assert prompt_names(("TUM", "fat"), ["fat=adipose tissue"]) == ["tumor", "adipose tissue"]
    with pytest.raises(LossInputError, match="stage1.plim.descriptions"):
        prompt_names(("TUM",), ["XYZ=something"])
    with pytest.raises(LossInputError, match="KEY=full name"):
        prompt_names(("TUM",), ["tumor"])


# ----------------------------------------------------------------------------- presets


def test_presets_load_validate_and_cite_every_value():
    assert list_presets() == PRESETS
    for name in PRESETS:
        cfg = load_preset(name)
        assert isinstance(cfg, ProtosegConfig) and cfg.model.weights == "auto" and cfg.model.output_stride == 16
        assert cfg.data.patch_size == 224
        for line in preset_text(name).splitlines():
            body = line.split("#", 1)[0]
            if ":" in body and body.split(":", 1)[1].strip() and not body.strip().startswith("-"):
                assert "#" in line, f"{name}: value without a source comment: {line!r}"
    pbip = load_preset("pbip-bcss")
    assert (pbip.stage1.lr, pbip.stage1.weight_decay, pbip.stage1.epochs, pbip.data.batch_size) == (5e-5, 1e-3, 8, 10)
    assert pbip.stage1.delta == 0.5 and pbip.stage1.similarity.temperature == 0.07 and pbip.bank.k == 3
    assert load_preset("lpd-bcss").model.learnable_k == 10
    pscl = load_preset("pscl-bcss")
    assert pscl.stage1.pscl.decoder and [a.value for a in pscl.stage1.addons] == ["pscl"]
    assert load_preset("pbip-luad").data.layout is None  # a preset never forces the layout (issue 24)
    assert "TUM=tumor" in load_preset("plim-bcss").stage1.plim.descriptions
    assert set(preset_dict("pbip-bcss")) <= {"data", "model", "bank", "stage1", "stage2", "run"}
    with pytest.raises(PresetError, match="pbip-bcss"):
        load_preset("pbip")


def test_preset_then_file_then_overrides(tmp_path, capsys):
    from protoseg.cli import build_parser, main
    from protoseg.cli.common import config_from_args

    (tmp_path / "c.yaml").write_text(yaml.safe_dump({"stage1": {"epochs": 2}, "data": {"root": "/d"}}))
    args = build_parser().parse_args(
        ["train", "stage1", "--preset", "pbip-bcss", "--config", str(tmp_path / "c.yaml"), "--set", "stage1.lr=1e-3"]
    )
    cfg = config_from_args(args)
    assert (cfg.stage1.epochs, cfg.data.root, cfg.stage1.lr, cfg.stage1.delta) == (2, "/d", 1e-3, 0.5)
    assert cfg.stage1.similarity.temperature == 0.07  # from the preset
    assert main(["presets"]) == 0
    assert [ln.split()[0] for ln in capsys.readouterr().out.splitlines()] == PRESETS
    assert main(["presets", "--show", "lpd-bcss"]) == 0 and "diversity_weight: 0.5" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "stage1", "--preset", "nope"])
    with pytest.raises(ConfigError):
        load_config(None, ["stage1.pscl.decoder_dim=0"])


# ----------------------------------------------------------------------------- PSCL pixel decoder


def test_fpn_decoder_shape_and_gradients():
    dec = FpnPixelDecoder((8, 16, 32), dim=6)
    feats = [torch.randn(2, c, s, s, requires_grad=True) for c, s in ((8, 8), (16, 4), (32, 4))]
    out = dec(feats)
    assert out.shape == (2, 6, 8, 8)
    out.square().mean().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)


def test_pscl_decoder_trains_with_the_backbone():
    from protoseg.train.recipes import Stage1Objective, classnet_config

    cfg = load_config(
        None,
        [
            "model.backbone=resnet18",
            "model.weights=null",
            "data.patch_size=64",
            "stage1.recipe=cam",
            "stage1.addons=[pscl]",
            "stage1.pscl.decoder=true",
            "stage1.pscl.decoder_dim=16",
            "stage1.pscl.tau=0.0",
        ],
    )
    net = ClassNet(classnet_config(cfg, 2, 1, 1)).train()
    assert net.config.pixel_decoder_dim == 16 and net.backbone.output_stride == 16
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    batch = {"image": x, "label": torch.tensor([[1.0, 1.0], [1.0, 0.0]])}
    out = net(x)
    assert out.embeddings is not None and out.embeddings.shape == (2, 16, 8, 8)  # stride 8 (stage 2)
    loss, parts = Stage1Objective(cfg)(net, batch, step=0)
    assert parts["pscl"] > 0
    loss.backward()
    assert net.pixel_decoder.lateral[0].weight.grad.abs().sum() > 0
    assert net.backbone.model.layer2[0].downsample[0].weight.grad.abs().sum() > 0  # stage 2 learns (decoder)
    with torch.no_grad():
        assert net.eval()(x).embeddings is None  # inference does not run the decoder
    off = ClassNet(classnet_config(load_config(None, ["model.weights=null", "model.backbone=resnet18"]), 2, 4, 2))
    assert off.pixel_decoder is None


def test_rebuild_from_model_config_keeps_stride_and_decoder_without_weights():
    from protoseg.models import build_model, model_config

    net = ClassNet(
        ClassNetConfig(backbone="resnet18", head="cam", num_classes=2, output_stride=16, pixel_decoder_dim=8)
    )
    plain = model_config(net)
    assert (plain["output_stride"], plain["pixel_decoder_dim"], plain["weights"]) == (16, 8, None)
    again = build_model(plain)
    again.load_state_dict(net.state_dict())  # decoder weights travel with the checkpoint
    assert again.backbone.reductions == (4, 8, 16, 16)
    old = {k: v for k, v in plain.items() if k not in ("output_stride", "pixel_decoder_dim")}
    assert build_model(old).backbone.reductions == (4, 8, 16, 32)  # checkpoints from before keep stride 32


def test_hub_probe_is_quick_offline_and_trusts_proxies(monkeypatch):
    for key in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(key, raising=False)

    def refuse(*args, **kwargs):
        raise OSError("no route")

    monkeypatch.setattr(bb.socket, "create_connection", refuse)
    assert bb.hub_reachable() is False
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy:3128")
    assert bb.hub_reachable() is True
