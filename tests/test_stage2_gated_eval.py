"""``eval --use-labels`` on a stage-2 model (issue 24): the argmax among each patch's labelled classes and
background, the label-gated map a second round of pseudo-masks would use."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.train.evaluation import evaluate_segmentation


class _Fixed(torch.nn.Module):
    """Predicts class 1 everywhere, class 0 a close second, background last."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        probs = torch.tensor([0.35, 0.45, 0.05, 0.15]).view(1, 4, 1, 1)
        return probs.expand(b, 4, h, w).clone()


class _Patches(Dataset):
    """Two patches: one all class 0 labelled {0}, one all class 1 labelled {1}."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> dict:
        mask = torch.full((8, 8), i, dtype=torch.int64)
        return {"image": torch.zeros(3, 8, 8), "mask": mask, "label": torch.eye(3)[i]}


def test_stage2_label_gated_argmax_keeps_only_labelled_classes() -> None:
    classes = ClassSpec(names=("A", "B", "C"))
    free = evaluate_segmentation(_Fixed(), _Patches(), classes, torch.device("cpu"), batch_size=2, protocol="tissue")
    gated = evaluate_segmentation(
        _Fixed(), _Patches(), classes, torch.device("cpu"), batch_size=2, protocol="tissue", use_labels=True
    )
    assert free["IoU_B"] == 0.5 and free.get("IoU_A", 0.0) == 0.0  # class 1 everywhere
    assert gated["IoU_A"] == 1.0 and gated["IoU_B"] == 1.0  # each patch's own label wins
    by_mask = evaluate_segmentation(
        _Fixed(), _Patches(), classes, torch.device("cpu"), 2, protocol="tissue", use_labels=True, label_min_share=0.5
    )
    assert by_mask["mIoU"] == gated["mIoU"]  # labels read from the masks give the same gate here
