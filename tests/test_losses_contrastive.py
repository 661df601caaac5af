"""Tests for the PSCL pixel supervised-contrastive loss and its pseudo labels, against loops."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg.losses import pixel_supcon_loss, pscl_labels, supcon_from_features
from protoseg.losses.contrastive import _balanced_sample


def _supcon_ref(feats: list[list[float]], labels: list[int], t: float) -> float:
    def unit(v):
        n = math.sqrt(sum(x * x for x in v))
        return [x / n for x in v]

    z = [unit(v) for v in feats]
    dot = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(dot(z[i], z[a]) / t) for a in range(len(z)) if a != i)
        terms = [math.log(math.exp(dot(z[i], z[p]) / t) / denom) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


def _pixel_case():
    g = torch.Generator().manual_seed(4)
    emb = torch.randn(2, 4, 3, 3, generator=g)
    labels = torch.tensor(
        [
            [[0, 1, 255], [1, 2, 255], [0, 0, 3]],
            [[255, 255, 2], [1, 0, 255], [3, 255, 1]],
        ]
    )
    labels[1, 2, 0] = 4  # classes 3 and 4 now have one pixel each: anchors without positives
    return emb, labels


def test_pixel_supcon_matches_loop_reference() -> None:
    emb, labels = _pixel_case()
    got = pixel_supcon_loss(emb, labels, temperature=0.2, max_pixels=1024)
    feats, labs = [], []
    for b in range(2):
        for y in range(3):
            for x in range(3):
                if int(labels[b, y, x]) != 255:
                    feats.append([float(emb[b, d, y, x]) for d in range(4)])
                    labs.append(int(labels[b, y, x]))
    assert got.item() == pytest.approx(_supcon_ref(feats, labs, 0.2), rel=1e-5)


def test_pixel_supcon_ignores_ignored_pixels_and_gradients_skip_them() -> None:
    emb, labels = _pixel_case()
    emb.requires_grad_(True)
    loss = pixel_supcon_loss(emb, labels)
    loss.backward()
    ignored = (labels == 255)[:, None].expand_as(emb)
    assert emb.grad[ignored].abs().sum() == 0
    assert emb.grad[~ignored].abs().sum() > 0
    changed = emb.detach().clone()
    changed[ignored] = 100.0 * torch.randn(int(ignored.sum()))
    assert pixel_supcon_loss(changed, labels).item() == pytest.approx(loss.item(), rel=1e-6)


def test_supcon_from_features_small_cases() -> None:
    # two identical same-class vectors and one orthogonal: hand value
    feats = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    t = 0.5
    # anchors 0 and 1: -log(e^{2} / (e^{2} + e^{0})); anchor 2 has no positive
    want = -math.log(math.exp(2.0) / (math.exp(2.0) + 1.0))
    assert supcon_from_features(feats, labels, t).item() == pytest.approx(want, rel=1e-6)
    no_pos = supcon_from_features(feats.requires_grad_(True), torch.tensor([0, 1, 2]), t)
    no_pos.backward()
    assert no_pos.item() == 0.0


def test_pixel_supcon_empty_and_single_pixel_give_zero_with_grad() -> None:
    emb = torch.randn(1, 4, 3, 3, requires_grad=True)
    for labels in (
        torch.full((1, 3, 3), 255),
        torch.full((1, 3, 3), 255).index_put_(
            (torch.tensor([0]), torch.tensor([1]), torch.tensor([1])), torch.tensor(2)
        ),
    ):
        loss = pixel_supcon_loss(emb, labels)
        loss.backward()
        assert loss.item() == 0.0 and not torch.isnan(loss)


def test_pixel_supcon_sampling_bounded_balanced_and_seeded() -> None:
    labels = torch.cat([torch.zeros(100, dtype=torch.long), torch.ones(4, dtype=torch.long), torch.full((30,), 255)])
    idx = _balanced_sample(labels, 20, torch.Generator().manual_seed(0))
    assert idx.numel() == 20 and len(set(idx.tolist())) == 20
    assert int((labels[idx] == 1).sum()) == 4 and int((labels[idx] == 0).sum()) == 16
    assert not (labels[idx] == 255).any()
    emb = torch.randn(1, 8, 10, 12)
    pix = torch.randint(0, 3, (1, 10, 12))
    a = pixel_supcon_loss(emb, pix, max_pixels=16, generator=torch.Generator().manual_seed(5))
    b = pixel_supcon_loss(emb, pix, max_pixels=16, generator=torch.Generator().manual_seed(5))
    assert torch.isfinite(a) and a.item() == b.item()


def test_pixel_supcon_resizes_labels_nearest() -> None:
    emb = torch.randn(1, 4, 2, 2)
    low = torch.tensor([[[0, 1], [1, 0]]])
    high = low.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)  # (1, 4, 4)
    assert pixel_supcon_loss(emb, high).item() == pytest.approx(pixel_supcon_loss(emb, low).item(), rel=1e-6)


def test_pscl_labels_by_hand() -> None:
    cams = torch.tensor([[[[0.9, 0.1, 0.2]], [[0.3, 0.6, 0.24]]]])  # (1, 2, 1, 3)
    background = torch.tensor([[[False, False, False]]])
    assert pscl_labels(cams, background, tau=0.25).tolist() == [[[0, 1, 255]]]
    background = torch.tensor([[[True, False, True]]])
    assert pscl_labels(cams, background, tau=0.25).tolist() == [[[2, 1, 2]]]
