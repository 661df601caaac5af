"""Stage-2 losses: plain CE ignores 255; the confidence option weights confident pixels up, never down."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protoseg.losses import LossInputError, confidence_weighted_ce, segmentation_ce


def test_confidence_weighted_ce_weights_up_and_skips_ignore() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 6, 6, requires_grad=True)
    target = torch.randint(0, 5, (2, 6, 6))
    target[0, :2] = 255
    conf = torch.rand(2, 6, 6)
    ce = F.cross_entropy(logits, target, ignore_index=255, reduction="none")
    keep = target != 255
    w = (1 + conf) * keep
    expected = (w * ce).sum() / w.sum()
    got = confidence_weighted_ce(logits, target, conf)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    # zero confidence everywhere is plain CE (no pixel is weighted below it)
    assert confidence_weighted_ce(logits, target, torch.zeros_like(conf)).item() == pytest.approx(
        segmentation_ce(logits, target).item(), rel=1e-5
    )
    got.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_confidence_weighted_ce_edge_cases() -> None:
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    all_ignored = torch.full((1, 4, 4), 255)
    assert confidence_weighted_ce(logits, all_ignored, torch.ones(1, 4, 4)).item() == 0.0
    with pytest.raises(LossInputError, match="confidence"):
        confidence_weighted_ce(logits, torch.zeros(1, 4, 4, dtype=torch.long), torch.ones(1, 2, 2))
