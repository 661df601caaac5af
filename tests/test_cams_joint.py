"""Label-free CAM scaling (issue 24): one joint scale for the kept classes keeps the classifier's ranking between
classes, where per-class min-max lets a class that is weak everywhere take pixels from a strong one."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from protoseg import cams as cam_ops
from protoseg.cam_norm import CamNorm
from protoseg.classes import ClassSpec
from protoseg.config import load_config
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint, save_checkpoint
from protoseg.models.classnet import ClassNet, ClassNetConfig, ClassNetOutput
from protoseg.models.factory import model_config


def _two_class_maps() -> torch.Tensor:
    """Class 0 strong on the left half and fairly strong everywhere; class 1 weak everywhere, a bit higher right."""
    a = torch.full((1, 1, 4, 4), 4.0)
    a[..., :2] = 8.0
    b = torch.full((1, 1, 4, 4), 0.5)
    b[..., 2:] = 1.0
    return torch.cat([a, b], dim=1)


def test_joint_scaling_keeps_the_raw_ranking_per_class_minmax_does_not() -> None:
    maps = _two_class_maps()
    joint = cam_ops.normalize_cams_joint(maps)
    assert float(joint.max()) == pytest.approx(1.0, abs=1e-4) and float(joint.min()) >= 0.0
    assert torch.equal(joint.argmax(1), maps.argmax(1))  # class 0 everywhere: its CAM is higher everywhere
    per_class = cam_ops.normalize_cams(maps)
    assert bool((per_class.argmax(1)[..., 2:] == 1).all())  # min-max hands the weak class the right half


def test_joint_scale_is_over_the_kept_classes_only() -> None:
    maps = _two_class_maps()
    keep = torch.tensor([[False, True]])
    scaled = cam_ops.normalize_cams_joint(maps, keep)
    assert float(scaled[:, 0].abs().max()) == 0.0  # a dropped class neither wins nor sets the scale
    assert float(scaled[:, 1].max()) == pytest.approx(1.0, abs=1e-4)
    assert torch.equal(cam_ops.scale_cams(maps, CamNorm.PER_CLASS), cam_ops.normalize_cams(maps))
    assert torch.equal(cam_ops.scale_cams(maps, "joint", keep), scaled)


def _net(free_cams: CamNorm) -> ClassNet:
    torch.manual_seed(0)
    return ClassNet(ClassNetConfig(backbone="resnet18", head="cam", num_classes=2, free_cams=free_cams)).eval()


def test_label_free_scores_follow_the_configured_scaling() -> None:
    """The same forward output gives the joint ranking by default and the per-class rule when configured."""
    x = torch.rand(1, 3, 64, 64) * 0.5  # dark: no glass, every pixel is tissue
    logits = torch.tensor([[3.0, 3.0]])  # both classes pass the gate
    big = torch.nn.functional.interpolate(_two_class_maps(), size=(2, 2), mode="area")
    out = ClassNetOutput(logits=[logits], maps=[big])
    joint = _net(CamNorm.JOINT).label_free_scores(out, x).argmax(1)
    per_class = _net(CamNorm.PER_CLASS).label_free_scores(out, x).argmax(1)
    assert bool((joint == 0).all())
    assert bool((per_class[..., 40:] == 1).all())


def test_config_key_reaches_the_checkpoint_and_old_checkpoints_use_joint(tmp_path: Path) -> None:
    cfg = load_config(None, ["stage1.label_free_cams=per_class", "stage1.recipe=cam", "model.backbone=resnet18"])
    assert cfg.stage1.label_free_cams is CamNorm.PER_CLASS
    from protoseg.train.recipes import classnet_config

    assert classnet_config(cfg, 2, 8, 1).free_cams is CamNorm.PER_CLASS
    net = _net(CamNorm.PER_CLASS)
    spec = ClassSpec(names=("A", "B"))
    path = save_checkpoint(Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), spec), tmp_path / "a.pt")
    assert load_checkpoint(path).build_model().config.free_cams is CamNorm.PER_CLASS
    old = model_config(net)
    old.pop("free_cams")  # written before the setting existed
    path = save_checkpoint(Checkpoint(Stage.STAGE1, old, net.state_dict(), spec), tmp_path / "old.pt")
    assert load_checkpoint(path).build_model().config.free_cams is CamNorm.JOINT


def test_pseudo_masks_use_stage1_pseudo_cams_joint_by_default_and_per_class_on_request(monkeypatch) -> None:
    """Label-gated pseudo-masks rank the labelled classes on one scale by default (the weak class does not take
    the right half); ``stage1.pseudo.cams=per_class`` gives PBIP's per-class min-max rule."""
    from protoseg.train.evaluation import pseudo_masks

    net = _net(CamNorm.JOINT)
    maps = torch.nn.functional.interpolate(_two_class_maps(), size=(2, 2), mode="area")
    monkeypatch.setattr(ClassNet, "forward", lambda self, x, merge=None: ClassNetOutput([torch.zeros(1, 2)], [maps]))
    x = torch.rand(1, 3, 64, 64) * 0.5  # dark: no glass
    both = torch.tensor([[1.0, 1.0]])
    default = load_config(None, [])
    assert default.stage1.pseudo.cams is CamNorm.JOINT
    mask, _ = pseudo_masks(net, x, both, default)
    assert bool((mask == 0).all())
    mask, _ = pseudo_masks(net, x, both, load_config(None, ["stage1.pseudo.cams=per_class"]))
    assert bool((mask[..., 48:] == 1).all()) and bool((mask[..., :16] == 0).all())
