"""Stage-1 checkpoint selection (issue 24, 3a and 6): best.pt is chosen by the label-free prediction's quality on
validation (label-free mIoU on the val masks, else the gate's presence balanced accuracy against the image labels),
which tells a one-class model from one that separates classes where the label-gated pseudo-mask metric ties."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, load_config
from protoseg.data.datasets import PatchDataset
from protoseg.data.records import PatchRecord
from protoseg.models.checkpoint import load_checkpoint
from protoseg.models.classnet import ClassNet, ClassNetConfig, ClassNetOutput
from protoseg.train.calibration import presence_balanced_accuracy
from protoseg.train.stage1 import LABEL_FREE_MIOU, PRESENCE_ACCURACY, Stage1Trainer, selection_metric

SIZE = 32
CLASSES = ClassSpec(names=("A", "B"))
RED, BLUE = (0.85, 0.15, 0.15), (0.15, 0.15, 0.85)  # saturated: the glass detector finds no glass


class _Stub(ClassNet):
    """CAMs from the colours (red = A, blue = B), identical in both variants; image logits either follow the
    colours (``separates``) or always name A (one class everywhere without labels)."""

    def __init__(self, separates: bool) -> None:
        super().__init__(ClassNetConfig(backbone="resnet18", head="cam", num_classes=2))
        self.separates = separates

    def forward(self, x: torch.Tensor, merge: Any = None) -> ClassNetOutput:
        maps = torch.stack([x[:, 0], x[:, 2]], dim=1) * 4 - 2
        if self.separates:
            logits = 4 * (maps > 0).float().mean(dim=(2, 3))
        else:
            logits = torch.tensor([3.0, -3.0]).expand(x.shape[0], 2)
        return ClassNetOutput(logits=[logits], maps=[maps])


def _sample(split: bool) -> dict[str, torch.Tensor]:
    """A patch red on the left (A) and, when ``split``, blue on the right (B), with its label and mask."""
    image = torch.tensor(RED)[:, None, None].repeat(1, SIZE, SIZE)
    mask = torch.zeros(SIZE, SIZE, dtype=torch.long)
    if split:
        image[:, :, SIZE // 2 :] = torch.tensor(BLUE)[:, None, None]
        mask[:, SIZE // 2 :] = 1
    label = torch.tensor([1.0, 1.0 if split else 0.0])
    return {"image": image, "label": label, "mask": mask}


def _config(tmp_path: Path, *extra: str) -> ProtosegConfig:
    return load_config(
        None,
        [
            f"data.patch_size={SIZE}",
            "data.batch_size=4",
            "model.backbone=resnet18",
            "model.weights=null",
            "stage1.warm_start=none",
            "stage1.recipe=cam",
            "run.device=cpu",
            f"run.out_dir={tmp_path / 'run'}",
            *extra,
        ],
    )


def _validate(trainer: Stage1Trainer, separates: bool) -> dict[str, float]:
    trainer.net = _Stub(separates)
    return trainer.validate()


def test_selection_metric_prefers_masks_then_image_labels() -> None:
    assert selection_metric(val_masks=True, val_images=True) == LABEL_FREE_MIOU
    assert selection_metric(val_masks=False, val_images=True) == PRESENCE_ACCURACY


def test_one_class_model_scores_below_a_separating_one_where_label_gated_ties(tmp_path: Path) -> None:
    val = [_sample(split=i % 3 != 0) for i in range(9)]
    trainer = Stage1Trainer(_config(tmp_path), val, val, CLASSES)  # type: ignore[arg-type]
    assert trainer.monitor == LABEL_FREE_MIOU
    one, both = _validate(trainer, separates=False), _validate(trainer, separates=True)
    assert one["mIoU"] == pytest.approx(both["mIoU"])  # same CAMs: the label-gated metric cannot tell them apart
    assert both[LABEL_FREE_MIOU] == pytest.approx(1.0)
    assert one[LABEL_FREE_MIOU] < both[LABEL_FREE_MIOU] - 0.3
    assert one["label_free_IoU_B"] == 0.0
    assert one[PRESENCE_ACCURACY] < both[PRESENCE_ACCURACY] == pytest.approx(1.0)


def _unmasked_split(tmp_path: Path, n: int) -> PatchDataset:
    """A val split of PNG patches with image-level labels and no masks."""
    records = []
    for i in range(n):
        sample = _sample(split=i % 3 != 0)
        path = tmp_path / "val" / f"p{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((sample["image"].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)
        records.append(PatchRecord(image=path, name=path.stem, label=tuple(int(v) for v in sample["label"])))
    return PatchDataset(records, CLASSES, cache="none")


def test_without_val_masks_the_gate_presence_balanced_accuracy_selects(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    val = _unmasked_split(tmp_path, 9)
    train = [_sample(split=True) for _ in range(4)]
    with caplog.at_level(logging.WARNING, logger="protoseg.train.evaluation"):
        trainer = Stage1Trainer(_config(tmp_path), train, val, CLASSES)  # type: ignore[arg-type]
    assert trainer.monitor == PRESENCE_ACCURACY
    assert any(PRESENCE_ACCURACY in r.getMessage() for r in caplog.records)  # says what best.pt is chosen by
    one, both = _validate(trainer, separates=False), _validate(trainer, separates=True)
    assert "mIoU" not in both and LABEL_FREE_MIOU not in both
    assert one[PRESENCE_ACCURACY] < both[PRESENCE_ACCURACY] == pytest.approx(1.0)


def test_presence_balanced_accuracy_of_the_gate() -> None:
    scores = np.array([[0.9, 0.6], [0.9, 0.1], [0.2, 0.7]])
    present = np.array([[1, 1], [1, 0], [0, 1]], bool)
    assert presence_balanced_accuracy(scores, present, (0.5, 0.5)) == pytest.approx(1.0)
    # B's threshold above every score: kept only where it is the top class (image 3): recall 1/2, absent 1/1
    assert presence_balanced_accuracy(scores, present, (0.5, 0.8)) == pytest.approx((1.0 + 0.75) / 2)
    # a gate keeping every class scores 0.5 however common the class (F1 would give A 0.8, B 0.8)
    assert presence_balanced_accuracy(scores, present, (0.05, 0.05)) == pytest.approx(0.5)
    # a class present in every image: its recall alone
    assert presence_balanced_accuracy(scores[:2], present[:2], (0.5, 0.5)) == pytest.approx(1.0)
    assert np.isnan(presence_balanced_accuracy(np.zeros((0, 2)), np.zeros((0, 2), bool), (0.5, 0.5)))


def test_pipeline_best_checkpoint_names_its_selection_metric(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.train.pipeline import train_stage1

    data = write_bcss_dataset(tmp_path / "data", n_train=8, n_val=6, n_test=2, size=SIZE, seed=0)
    cfg = _config(tmp_path, f"data.root={data}", "stage1.epochs=2", "stage1.lr=1e-3")
    with caplog.at_level(logging.INFO, logger="protoseg.train.engine"):
        result = train_stage1(cfg)
    assert result.best is not None and result.selection_metric == LABEL_FREE_MIOU
    best = load_checkpoint(result.best)
    assert best.metrics["selection_metric"] == LABEL_FREE_MIOU
    assert best.best_metric == pytest.approx(best.metrics[LABEL_FREE_MIOU])
    rows = [json.loads(line) for line in (result.last.parent / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(r["selection_metric"] == LABEL_FREE_MIOU and "mIoU" in r and PRESENCE_ACCURACY in r for r in rows)
    chosen = max(rows, key=lambda r: r[LABEL_FREE_MIOU])  # the first of equal values stays best
    assert best.epoch == chosen["epoch"]
    assert any(f"best.pt: epoch 1, {LABEL_FREE_MIOU}" in r.getMessage() for r in caplog.records)


def test_resume_does_not_compare_a_best_chosen_by_another_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from protoseg.models.checkpoint import Checkpoint, Stage

    val = [_sample(split=True) for _ in range(2)]
    trainer = Stage1Trainer(_config(tmp_path), val, val, CLASSES)  # type: ignore[arg-type]

    def ckpt(metrics: dict[str, Any]) -> Checkpoint:
        return Checkpoint(Stage.STAGE1, {}, {}, CLASSES, best_metric=0.6, metrics=metrics)

    assert trainer._restored_best(ckpt({"selection_metric": LABEL_FREE_MIOU})) == 0.6
    with caplog.at_level(logging.WARNING, logger="protoseg.train.engine"):
        assert trainer._restored_best(ckpt({"mIoU": 0.6})) is None  # older protoseg: chosen by label-gated mIoU
    assert any("chosen by mIoU" in r.getMessage() for r in caplog.records)
