"""Training backbones named by Hugging Face hub id (``model.backbone: hf-hub:org/repo``), offline from a fake local
cache: cached weights load, a missing id fails with one line naming what to copy where, a ViT is refused, run
configs build through the real factories, and a checkpoint reloads without the cached weights. Tiny timm models
only; nothing is downloaded."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

from protoseg.classes import BCSS_WSSS
from protoseg.config import load_config
from protoseg.models import build_model
from protoseg.models.backbone import BackboneError, WeightsError, WeightsKind, build_backbone, planned_weights
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint, save_checkpoint
from protoseg.models.classnet import ClassNet
from protoseg.models.factory import model_config
from protoseg.models.segnet import SegNet
from protoseg.train.recipes import classnet_config
from protoseg.train.stage2 import segnet_config
from tiny_models import MISSING_REPO, hub_snapshot, seeded, use_offline_cache

timm = pytest.importorskip("timm")
torch.set_num_threads(1)

REPO = "protoseg-test/tiny-backbone"  # test_resnet: config.json + model.safetensors
CONFIG_ONLY = "protoseg-test/config-only"  # test_resnet: config.json alone
VIT_REPO = "protoseg-test/tiny-vit"  # test_vit: a plain ViT, every stage at stride 16
NOT_TIMM = "protoseg-test/not-timm"  # a transformers-style config without 'architecture'
HUB_ID = f"hf-hub:{REPO}"


def write_repo(cache: Path, repo: str, arch: str, seed: int, weights: bool = True) -> torch.nn.Module:
    """A timm model saved as timm pushes it to the hub (config.json + model.safetensors) into ``cache``."""
    from timm.models import save_for_hf

    net = seeded(lambda: timm.create_model(arch).eval(), seed)
    snapshot = hub_snapshot(cache, repo)
    save_for_hf(net, snapshot, safe_serialization=True)
    if not weights:
        (snapshot / "model.safetensors").unlink()
    return net


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> dict:
    cache = tmp_path_factory.mktemp("hub") / "hf-cache"
    net = write_repo(cache, REPO, "test_resnet", 7)
    write_repo(cache, CONFIG_ONLY, "test_resnet", 8, weights=False)
    write_repo(cache, VIT_REPO, "test_vit", 9, weights=False)
    (hub_snapshot(cache, NOT_TIMM) / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    return {"cache": cache, "net": net}


@pytest.fixture
def offline_hub(hub: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    use_offline_cache(monkeypatch, hub["cache"])
    return hub


def assert_hub_weights(backbone: torch.nn.Module, net: torch.nn.Module) -> None:
    """Every backbone tensor equals the hub model's (the classifier is not part of a features_only model)."""
    own, ref = backbone.state_dict(), net.state_dict()
    shared = [k for k in own if k.removeprefix("model.") in ref]
    assert len(shared) == len(own) > 10
    for key in shared:
        torch.testing.assert_close(own[key], ref[key.removeprefix("model.")], rtol=0, atol=0)


def test_offline_build_takes_the_cached_weights(offline_hub: dict) -> None:
    assert planned_weights(HUB_ID, "auto").kind is WeightsKind.CACHE  # from the cache alone, nothing built
    for weights in ("hub", "auto"):
        backbone = build_backbone(HUB_ID, weights)
        assert_hub_weights(backbone, offline_hub["net"])
        info = backbone.weights_info
        assert info.kind is WeightsKind.CACHE and info.pretrained and info.architecture == "test_resnet"
        assert info.source.endswith("model.safetensors") and str(offline_hub["cache"]) in info.source
        assert info.describe() == f"{HUB_ID} (test_resnet): hub weights (local cache)"
        assert backbone.name == HUB_ID and backbone.reductions == (4, 8, 16, 32)
    random = build_backbone(HUB_ID, None, output_stride=16)
    assert random.weights_info.kind is WeightsKind.RANDOM and random.reductions == (4, 8, 16, 16)
    first = "model.conv1.0.weight"
    assert not torch.equal(random.state_dict()[first], offline_hub["net"].state_dict()[first.removeprefix("model.")])


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "PROTOSEG_OFFLINE"])
@pytest.mark.parametrize("weights", ["hub", "auto", None])
def test_missing_id_offline_is_one_line_naming_what_to_copy_where(
    offline_hub: dict, monkeypatch: pytest.MonkeyPatch, variable: str, weights: str | None
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv(variable, "1")
    with pytest.raises(WeightsError) as err:  # never random init of some other architecture
        build_backbone(f"hf-hub:{MISSING_REPO}", weights)
    text = str(err.value)
    assert "\n" not in text
    for part in (
        f"hf-hub:{MISSING_REPO} is not in the local Hugging Face cache {offline_hub['cache']}",
        "models--protoseg-test--absent",
        f"{variable}=1 forbids downloads",
        f"`hf download {MISSING_REPO}`",
        f"copy ~/.cache/huggingface/hub/models--protoseg-test--absent into {offline_hub['cache']}",
        "model.backbone / stage2.backbone",
        "model.weights / stage2.weights",
    ):
        assert part in text, (part, text)


def test_cached_config_without_weights(offline_hub: dict, caplog: pytest.LogCaptureFixture) -> None:
    hub_id = f"hf-hub:{CONFIG_ONLY}"
    with caplog.at_level(logging.WARNING, logger="protoseg.models.backbone"):
        auto = build_backbone(hub_id, "auto")  # random init of the same architecture, with one warning
    assert auto.weights_info.kind is WeightsKind.FALLBACK and auto.weights_info.architecture == "test_resnet"
    assert auto.weights_info.describe() == f"{hub_id} (test_resnet): random init (no hub weights found)"
    assert [r for r in caplog.records if r.levelno == logging.WARNING and hub_id in r.getMessage()]
    assert build_backbone(hub_id, None).weights_info.kind is WeightsKind.RANDOM
    with pytest.raises(WeightsError) as err:
        build_backbone(hub_id, "hub")
    text = str(err.value)
    assert "\n" not in text and "has config.json but no weights file" in text
    assert "models--protoseg-test--config-only" in text and "copy the repo's model.safetensors" in text


def test_local_weights_file_with_a_hub_architecture(offline_hub: dict, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    file = tmp_path / "tuned.safetensors"
    save_file({k: v.contiguous() for k, v in offline_hub["net"].state_dict().items()}, str(file))
    backbone = build_backbone(f"hf-hub:{CONFIG_ONLY}", str(file))
    assert backbone.weights_info.kind is WeightsKind.FILE and backbone.weights_info.architecture == "test_resnet"
    assert_hub_weights(backbone, offline_hub["net"])


def test_vit_and_non_timm_repos_are_refused(offline_hub: dict) -> None:
    with pytest.raises(BackboneError, match=r"tiny-vit \(test_vit\)' gives feature strides .*choose a hierarchical"):
        build_backbone(f"hf-hub:{VIT_REPO}", None)
    with pytest.raises(BackboneError, match="is not a timm model .*names no 'architecture'"):
        build_backbone(f"hf-hub:{NOT_TIMM}", "auto")


def test_online_hands_the_hub_id_to_timm(hub: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    """With the hub reachable the id goes to timm as is (it downloads or reuses the cache); faked here."""
    import huggingface_hub

    from protoseg.models import backbone_hub

    use_offline_cache(monkeypatch, hub["cache"])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(backbone_hub, "hub_offline_reason", lambda: None)
    snapshot = backbone_hub.cached_snapshot(HUB_ID)
    assert snapshot is not None
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", lambda repo, name, **_: str(snapshot / name))
    calls: list[tuple[str, bool]] = []
    create = timm.create_model

    def recording_create(name: str, pretrained: bool = False, **kwargs):
        calls.append((name, pretrained))
        return create(name.replace(HUB_ID, f"local-dir:{snapshot}"), pretrained=pretrained, **kwargs)

    monkeypatch.setattr(timm, "create_model", recording_create)
    backbone = build_backbone(HUB_ID, "hub")
    assert calls == [(HUB_ID, True)]
    assert backbone.weights_info.kind is WeightsKind.CACHE  # already cached: timm reuses it
    assert_hub_weights(backbone, hub["net"])


def test_run_config_builds_hub_backbones(offline_hub: dict) -> None:
    """``model.backbone`` / ``stage2.backbone`` from a run config, through the stage-1 and stage-2 factories."""
    cfg = load_config(None, [f"model.backbone={HUB_ID}", "model.weights=hub", f"stage2.backbone={HUB_ID}"])
    assert cfg.model.backbone == HUB_ID and cfg.stage2.weights == "auto"
    stage1 = ClassNet(classnet_config(cfg, 2, 8, 1))
    stage2 = SegNet(segnet_config(cfg, 2))
    for net in (stage1, stage2):
        assert net.weights_info.kind is WeightsKind.CACHE
        assert_hub_weights(net.backbone.model, offline_hub["net"])
    assert stage1.backbone.reductions == (4, 8, 16, 16)  # model.output_stride 16 (the default)
    with torch.no_grad():
        assert stage2.eval()(torch.rand(1, 3, 64, 64)).shape == (1, 3, 64, 64)


def test_checkpoint_reloads_without_the_cached_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "hf-cache"
    use_offline_cache(monkeypatch, cache)
    write_repo(cache, REPO, "test_resnet", 7)
    net = build_model({"kind": "segnet", "backbone": HUB_ID, "weights": "hub", "num_classes": 2, "decoder_dim": 8})
    with torch.no_grad():  # "training": the checkpoint's weights differ from the hub's
        for p in net.parameters():
            p.add_(0.01)
    config = model_config(net)
    assert config["backbone"] == HUB_ID and config["weights"] is None  # the checkpoint carries the weights
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path = save_checkpoint(Checkpoint(Stage.STAGE2, config, state, BCSS_WSSS, epoch=2), tmp_path / "best.pt")
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = net.eval()(x)
    snapshot = next((cache / "models--protoseg-test--tiny-backbone" / "snapshots").iterdir())
    (snapshot / "model.safetensors").unlink()  # the hub weights are gone, config.json stays
    back = load_checkpoint(path).build_model()  # offline, only the architecture from the cached config.json
    assert back.weights_info.kind is WeightsKind.FILE and back.weights_info.architecture == "test_resnet"
    assert back.weights_info.describe() == f"{HUB_ID} (test_resnet): weights from stage2 checkpoint (epoch 2)"
    with torch.no_grad():
        torch.testing.assert_close(back(x), ref)
    shutil.rmtree(cache)
    with pytest.raises(WeightsError) as err:
        load_checkpoint(path).build_model()
    text = str(err.value)
    assert "\n" not in text and f"{HUB_ID} is not in the local Hugging Face cache {cache}" in text
    assert "the repo's config.json alone is enough" in text
