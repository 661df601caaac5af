"""Per-class calibration of the label-free stage-1 class gate (issue 24, 3a): the threshold choice, its
fallbacks, checkpoints with and without calibrated thresholds, and the stage-1 pipeline recording them."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg import cams as cam_ops
from protoseg.classes import ClassSpec
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint, save_checkpoint
from protoseg.models.classnet import ClassNet, ClassNetConfig
from protoseg.models.factory import ModelConfigError, build_model, model_config
from protoseg.train.calibration import (
    BOUNDS,
    Criterion,
    best_threshold,
    calibrate_gate,
    calibrate_thresholds,
    format_thresholds,
)

SIZE = 64


def _tiny(**kw: object) -> ClassNet:
    torch.manual_seed(0)
    net = ClassNet(ClassNetConfig(backbone="resnet18", head="cam", num_classes=3, **kw))  # type: ignore[arg-type]
    return net.eval()  # batch-norm statistics stay fixed between calls


def test_threshold_separates_two_score_distributions() -> None:
    rng = np.random.default_rng(0)
    pos, neg = rng.uniform(0.35, 0.6, 40), rng.uniform(0.05, 0.25, 60)
    scores = np.concatenate([pos, neg])
    present = np.concatenate([np.ones(40, bool), np.zeros(60, bool)])
    for criterion in Criterion:
        t = best_threshold(scores, present, criterion)
        assert t is not None and neg.max() < t <= pos.min()  # a fixed 0.8 would drop every present image


def test_threshold_stays_in_bounds_and_prefers_the_best_f1() -> None:
    # every score 0.99: any cut keeps all or none; the bound, not 1.0, is the threshold
    present = np.array([True, True, False])
    t = best_threshold(np.array([0.99, 0.995, 0.999]), present)
    assert t is not None and BOUNDS[0] <= t <= BOUNDS[1]
    # overlapping scores: the chosen cut reaches the best F1 any cut can reach
    rng = np.random.default_rng(1)
    scores, present = rng.uniform(0, 1, 50), rng.uniform(0, 1, 50) < 0.5
    t = best_threshold(scores, present)
    assert t is not None

    def f1(cut: float) -> float:
        keep = scores >= cut
        tp = (keep & present).sum()
        return 2 * tp / (2 * tp + (keep & ~present).sum() + (~keep & present).sum())

    assert f1(t) >= max(f1(c) for c in np.linspace(*BOUNDS, 181)) - 1e-9


def test_classes_without_positives_or_negatives_keep_the_fallback() -> None:
    scores = np.array([[0.9, 0.2, 0.4], [0.1, 0.3, 0.5], [0.8, 0.25, 0.6]])
    present = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1]], bool)  # class 1 never present, class 2 always
    cal = calibrate_thresholds(scores, present, fallback=0.8)
    assert cal.calibrated == (True, False, False)
    assert cal.thresholds[1:] == (0.8, 0.8)
    assert 0.1 < cal.thresholds[0] <= 0.8 and cal.images == 3
    assert format_thresholds(cal, ["A", "B", "C"]).endswith("B 0.80*, C 0.80*")


def test_calibrate_gate_stores_thresholds_and_logs_the_fallback(caplog: pytest.LogCaptureFixture) -> None:
    net = _tiny()
    images = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=torch.float32)
    ds = [{"image": images[i], "label": labels[i]} for i in range(6)]
    with caplog.at_level(logging.INFO, logger="protoseg.train.calibration"):
        cal = calibrate_gate(net, ds, torch.device("cpu"), ["A", "B", "C"], batch_size=4)  # type: ignore[arg-type]
    assert net.config.class_thresholds == cal.thresholds
    assert cal.calibrated == (True, True, False) and cal.thresholds[2] == 0.8
    fallback = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(fallback) == 1 and "C" in fallback[0].getMessage()


def test_gate_uses_per_class_thresholds_and_keeps_the_top_class() -> None:
    scores = torch.tensor([[0.6, 0.3, 0.1], [0.2, 0.25, 0.3]])
    keep = cam_ops.gate_classes(scores, torch.tensor([0.5, 0.2, 0.9]))
    assert keep.tolist() == [[True, True, False], [False, True, True]]  # row 2: class 2 by top score
    assert cam_ops.gate_classes(scores, 0.8).tolist() == [[True, False, False], [False, False, True]]


def test_class_thresholds_are_validated() -> None:
    with pytest.raises(ValueError, match="class_thresholds"):
        ClassNetConfig(backbone="resnet18", head="cam", num_classes=3, class_thresholds=(0.5, 0.5))
    with pytest.raises(ModelConfigError):
        build_model({**model_config(_tiny()), "class_thresholds": [0.5, 2.0, 0.5]})


def _save(net: ClassNet, path: Path) -> Path:
    ckpt = Checkpoint(
        stage=Stage.STAGE1, model_config=model_config(net), state_dict=net.state_dict(), classes=_classes()
    )
    return save_checkpoint(ckpt, path)


def _classes() -> ClassSpec:
    return ClassSpec(names=("A", "B", "C"))


def test_checkpoint_with_thresholds_predicts_with_them_and_old_ones_as_before(tmp_path: Path) -> None:
    net = _tiny()
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scores = cam_ops.class_scores(net(x).logits[-1])
    # an old checkpoint (no class_thresholds key): the fixed score_threshold, as before
    old_cfg = {k: v for k, v in model_config(net).items() if k != "class_thresholds"}
    old = Checkpoint(Stage.STAGE1, old_cfg, net.state_dict(), _classes())
    old_net = load_checkpoint(save_checkpoint(old, tmp_path / "old.pt")).build_model()
    assert old_net.config.class_thresholds is None  # type: ignore[union-attr]
    assert torch.equal(old_net.class_gate(net(x).logits[-1]), cam_ops.gate_classes(scores, 0.8))  # type: ignore[operator]
    assert torch.allclose(old_net.predict(x), net.predict(x))  # type: ignore[operator]
    # thresholds just under every score: every class kept, so the prediction differs from the fixed gate's
    low = tuple(float(v) - 1e-3 for v in scores.min(dim=0).values)
    net.set_class_thresholds(low)
    new_net = load_checkpoint(_save(net, tmp_path / "new.pt")).build_model()
    assert new_net.config.class_thresholds == pytest.approx(low)  # type: ignore[union-attr]
    assert new_net.class_gate(net(x).logits[-1]).all()  # type: ignore[operator]
    assert torch.allclose(new_net.predict(x), net.predict(x))  # type: ignore[operator]
    cams = new_net.cams(x)  # type: ignore[operator]
    assert bool((cams.flatten(2).amax(2) > 0).all())  # the label-free CAM path uses the same gate


def test_stage1_pipeline_records_calibrated_thresholds(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from protoseg.config import load_config
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.train.pipeline import train_stage1

    data = write_bcss_dataset(tmp_path / "data", n_train=16, n_val=10, n_test=2, size=SIZE, seed=0)
    cfg = load_config(
        None,
        [
            f"data.root={data}",
            f"data.patch_size={SIZE}",
            "data.batch_size=8",
            "model.backbone=resnet18",
            "model.weights=null",
            "stage1.warm_start=none",
            "stage1.recipe=cam",
            "stage1.epochs=1",
            "stage1.lr=1e-3",
            "run.device=cpu",
            f"run.out_dir={tmp_path / 'run'}",
        ],
    )
    with caplog.at_level(logging.INFO, logger="protoseg.train.calibration"):
        result = train_stage1(cfg)
    assert any("class gate calibrated on 10 validation images" in r.getMessage() for r in caplog.records)
    for path in (result.last, result.best):
        assert path is not None
        ckpt = load_checkpoint(path)
        thresholds = ckpt.model_config["class_thresholds"]
        assert len(thresholds) == 4 and all(BOUNDS[0] <= t <= BOUNDS[1] or t == 0.8 for t in thresholds)
        assert tuple(ckpt.build_model().gate_thresholds()) == pytest.approx(thresholds)  # type: ignore[operator]
