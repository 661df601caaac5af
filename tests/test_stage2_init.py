"""Stage-2 encoder start (issue 24): offline, stage 2 takes the stage-1 encoder instead of random init; the
checkpoint is found beside the pseudo-masks only when its weights made them; a misfit is one clear error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from protoseg.classes import ClassSpec
from protoseg.config import EncoderInit, load_config
from protoseg.infer.identity import model_sha256
from protoseg.models.backbone import WeightsKind
from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
from protoseg.models.classnet import ClassNet, ClassNetConfig
from protoseg.models.factory import model_config
from protoseg.models.segnet import SegNet, SegNetConfig
from protoseg.train.errors import TrainingError
from protoseg.train.pseudo import MANIFEST
from protoseg.train.stage2_init import init_encoder, stage1_checkpoint_of

CLASSES = ClassSpec(names=("TUM", "STR"))


def _stage1(path: Path, backbone: str = "resnet18", seed: int = 0) -> tuple[Path, ClassNet]:
    torch.manual_seed(seed)
    net = ClassNet(ClassNetConfig(backbone=backbone, head="cam", num_classes=2))
    return save_checkpoint(Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), CLASSES), path), net


def _segnet(backbone: str = "resnet18") -> SegNet:
    torch.manual_seed(1)
    return SegNet(SegNetConfig(backbone=backbone, weights=None, num_classes=2, decoder_dim=16))


def _same_encoder(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_auto_takes_the_stage1_encoder_when_stage2_would_start_random(tmp_path: Path) -> None:
    ckpt, stage1 = _stage1(tmp_path / "stage1" / "best.pt")
    net = _segnet()
    assert not _same_encoder(net.backbone, stage1.backbone)
    info = init_encoder(net, EncoderInit.AUTO, ckpt)
    assert _same_encoder(net.backbone, stage1.backbone)
    assert info.kind is WeightsKind.FILE and net.weights_info == info and "best.pt" in info.describe()


def test_weights_mode_and_no_checkpoint_leave_the_encoder_alone(tmp_path: Path) -> None:
    ckpt, _ = _stage1(tmp_path / "best.pt")
    for mode, source in ((EncoderInit.WEIGHTS, ckpt), (EncoderInit.AUTO, None)):
        net = _segnet()
        before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
        assert init_encoder(net, mode, source).kind is WeightsKind.RANDOM
        assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())


def test_another_backbone_is_an_error_when_asked_and_a_fallback_on_auto(tmp_path: Path) -> None:
    ckpt, _ = _stage1(tmp_path / "best.pt", backbone="resnet34")
    with pytest.raises(TrainingError, match="resnet34.*stage2.backbone is 'resnet18'") as err:
        init_encoder(_segnet(), EncoderInit.STAGE1, ckpt)
    assert "\n" not in str(err.value)
    assert init_encoder(_segnet(), EncoderInit.AUTO, ckpt).kind is WeightsKind.RANDOM
    with pytest.raises(TrainingError, match="stage2.encoder_init=weights"):
        init_encoder(_segnet(), EncoderInit.STAGE1, None)


def test_the_checkpoint_beside_the_pseudo_masks_is_found_only_by_its_weights(tmp_path: Path) -> None:
    _, made_them = _stage1(tmp_path / "stage1" / "last.pt", seed=0)
    _stage1(tmp_path / "stage1" / "best.pt", seed=5)  # a look-alike with other weights
    pseudo = tmp_path / "pseudo"
    pseudo.mkdir()
    (pseudo / MANIFEST).write_text(json.dumps({"checkpoint_sha256": model_sha256(made_them)}))
    assert stage1_checkpoint_of(pseudo, tmp_path / "stage1") == tmp_path / "stage1" / "last.pt"
    (pseudo / MANIFEST).write_text(json.dumps({"checkpoint_sha256": "0" * 64}))
    assert stage1_checkpoint_of(pseudo, tmp_path / "stage1") is None
    assert stage1_checkpoint_of(tmp_path / "nowhere", tmp_path / "stage1") is None


def test_encoder_init_is_a_config_setting_with_a_clear_error() -> None:
    assert load_config(None, []).stage2.encoder_init is EncoderInit.AUTO
    assert load_config(None, ["stage2.encoder_init=weights"]).stage2.encoder_init is EncoderInit.WEIGHTS
    with pytest.raises(Exception, match="stage2.encoder_init.*not one of"):
        load_config(None, ["stage2.encoder_init=imagenet"])


def test_an_encoder_of_another_shape_is_never_loaded_half_way(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net1 = ClassNet(ClassNetConfig(backbone="resnet18", head="cam", num_classes=2))
    state = net1.state_dict()
    key = next(k for k in state if k.startswith("backbone.") and k.endswith("conv1.weight"))
    state[key] = torch.zeros(3, 3, 3, 3)  # one tensor of another shape (a damaged or foreign checkpoint)
    ckpt = save_checkpoint(Checkpoint(Stage.STAGE1, model_config(net1), state, CLASSES), tmp_path / "odd.pt")
    net = _segnet()
    before = {k: v.clone() for k, v in net.backbone.state_dict().items()}
    assert init_encoder(net, EncoderInit.AUTO, ckpt).kind is WeightsKind.RANDOM
    assert all(torch.equal(before[k], v) for k, v in net.backbone.state_dict().items())  # nothing copied
    with pytest.raises(TrainingError, match=r"odd\.pt does not fit.*1 of another shape") as err:
        init_encoder(_segnet(), EncoderInit.STAGE1, ckpt)
    assert "\n" not in str(err.value)


def test_the_stage2_trainer_starts_from_the_stage1_encoder(tmp_path: Path) -> None:
    from protoseg.train.stage2 import Stage2Trainer

    ckpt, stage1 = _stage1(tmp_path / "best.pt", seed=5)  # not run.seed: a fresh encoder differs from it
    cfg = load_config(
        None, ["stage2.backbone=resnet18", "stage2.weights=null", "stage2.decoder_dim=16", "run.device=cpu"]
    )
    trainer = Stage2Trainer(cfg, [], None, CLASSES, stage1_info={"checkpoint": str(ckpt)})
    assert _same_encoder(trainer.net.backbone, stage1.backbone)
    plain = Stage2Trainer(cfg, [], None, CLASSES)
    assert not _same_encoder(plain.net.backbone, stage1.backbone)
