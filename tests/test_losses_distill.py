"""Distillation to the parent's scores: zero at the parent's own logits, positive elsewhere, weighted pixels only."""

from __future__ import annotations

import pytest
import torch

from protoseg.losses import LossInputError, distillation_kl


def test_kl_is_zero_at_the_parent_and_counts_only_weighted_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 8, 8)
    parent = torch.softmax(logits, dim=1)
    weight = torch.ones(2, 8, 8)
    assert float(distillation_kl(logits, parent, weight)) == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(2, 4, 8, 8, requires_grad=True)
    loss = distillation_kl(other, parent, weight)
    assert float(loss) > 0.01
    loss.backward()
    assert other.grad is not None and float(other.grad.abs().sum()) > 0
    half = weight.clone()
    half[:, :, 4:] = 0
    changed = other.detach().clone()
    changed[:, :, :, 4:] += 10 * torch.randn(2, 4, 8, 4)  # unweighted pixels change: the loss does not
    assert float(distillation_kl(changed, parent, half)) == pytest.approx(float(distillation_kl(other, parent, half)))
    none = distillation_kl(other, parent, torch.zeros(2, 8, 8))
    assert float(none) == 0.0 and none.requires_grad
    low = torch.randn(2, 4, 4, 4)  # logits at a lower resolution are upsampled to the parent's
    assert distillation_kl(low, parent, weight).shape == ()
    with pytest.raises(LossInputError, match="shapes"):
        distillation_kl(torch.randn(2, 3, 8, 8), parent, weight)
