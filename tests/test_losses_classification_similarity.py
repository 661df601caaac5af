"""Tests for protoseg.losses classification and PBIP FG/BG similarity, against loop references."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg.losses import (
    LossInputError,
    adaptive_masks,
    cam_area_regulariser,
    fg_bg_images,
    multistage_classification_loss,
    prototype_similarity_loss,
)


def _bce_ref(logits: torch.Tensor, labels: torch.Tensor) -> float:
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for c in range(logits.shape[1]):
            x, y = float(logits[b, c]), float(labels[b, c])
            sig = 1.0 / (1.0 + math.exp(-x))
            total += -(y * math.log(sig) + (1 - y) * math.log(1 - sig))
            count += 1
    return total / count


def test_multistage_classification_matches_reference_and_skips_zero_weight() -> None:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    stages = [torch.randn(2, 3, generator=g) for _ in range(4)]
    stages[0] = torch.full((2, 3), float("nan"))  # weight 0 -> never evaluated
    weights = (0.0, 0.1, 1.0, 1.0)
    got = multistage_classification_loss(stages, labels, weights)
    want = sum(w * _bce_ref(s, labels) for w, s in zip(weights[1:], stages[1:]))
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_multistage_classification_weights_and_errors() -> None:
    labels = torch.tensor([[1.0, 0.0]])
    logits = [torch.tensor([[2.0, -1.0]], requires_grad=True)]
    got = multistage_classification_loss(logits, labels, weights=(3.0,))
    assert got.item() == pytest.approx(3.0 * _bce_ref(logits[0].detach(), labels), rel=1e-6)
    zero = multistage_classification_loss(logits, labels, weights=(0.0,))
    zero.backward()
    assert zero.item() == 0.0
    with pytest.raises(LossInputError, match="stage weights"):
        multistage_classification_loss(logits, labels, weights=(1.0, 1.0))


def test_adaptive_masks_hand_made_cam() -> None:
    cam = torch.tensor([[0.0, 0.2, 0.4], [0.6, 0.8, 1.0], [0.1, 0.5, 0.3]]) * 0.5
    cams = torch.stack([cam, torch.zeros(3, 3)])[None]  # (1, 2, 3, 3)
    m_up, b = adaptive_masks(cams, (3, 3), delta=0.5)
    assert torch.equal(m_up, cams)
    # scaled CAM [[0, .1, .2], [.3, .4, .5], [.05, .25, .15]]: max .5, threshold .25 (inclusive)
    expected = [[False, False, False], [True, True, True], [False, True, False]]
    assert b[0, 0].tolist() == expected
    assert b[0, 1].all()  # all-zero CAM: 0 >= 0 everywhere


def test_adaptive_masks_bilinear_upsampling_by_hand() -> None:
    # 2x2 -> 4x4 with half-pixel centres: sample positions -0.25, 0.25, 0.75, 1.25 -> 0, .25, .75, 1
    cams = torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])
    m_up, b = adaptive_masks(cams, (4, 4), delta=0.5)
    for row in range(4):
        assert m_up[0, 0, row].tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])
        assert b[0, 0, row].tolist() == [False, False, True, True]
    with pytest.raises(LossInputError):
        adaptive_masks(cams, (4, 4), delta=1.5)


def _images_and_cams() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    images = torch.rand(2, 3, 3, 3, generator=g)
    cams = torch.rand(2, 3, 3, 3, generator=g).requires_grad_(True)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    return images, cams, labels


def test_fg_bg_images_pixelwise_reference() -> None:
    images, cams, labels = _images_and_cams()
    delta = 0.6
    out = fg_bg_images(images, cams, labels, delta)
    cams = cams.detach()
    assert out.batch_index.tolist() == [0, 0, 1]
    assert out.class_index.tolist() == [0, 2, 1]
    for n, (bi, ci) in enumerate(zip(out.batch_index.tolist(), out.class_index.tolist())):
        peak = max(float(v) for v in cams[bi, ci].flatten())
        for y in range(3):
            for x in range(3):
                m = float(cams[bi, ci, y, x])
                inside = m >= delta * peak
                for ch in range(3):
                    px = float(images[bi, ch, y, x])
                    want_fg = m * px if inside else 0.0
                    want_bg = 0.0 if inside else (1 - m) * px
                    assert float(out.x_fg[n, ch, y, x]) == pytest.approx(want_fg, abs=1e-6)
                    assert float(out.x_bg[n, ch, y, x]) == pytest.approx(want_bg, abs=1e-6)


def test_fg_bg_images_gradient_flows_into_cams() -> None:
    images, cams, labels = _images_and_cams()
    out = fg_bg_images(images, cams, labels, delta=0.6)
    out.x_fg.sum().backward()
    grad = cams.grad
    cams = cams.detach()
    assert grad is not None
    # absent classes get no gradient; present ones get sum_ch X where the mask is on
    assert torch.count_nonzero(grad[0, 1]) == 0 and torch.count_nonzero(grad[1, 0]) == 0
    for bi, ci in [(0, 0), (0, 2), (1, 1)]:
        peak = float(cams[bi, ci].max())
        for y in range(3):
            for x in range(3):
                on = float(cams[bi, ci, y, x]) >= 0.6 * peak
                want = float(images[bi, :, y, x].sum()) if on else 0.0
                assert float(grad[bi, ci, y, x]) == pytest.approx(want, abs=1e-6)


def test_fg_bg_images_no_present_class_is_empty_and_safe() -> None:
    images, cams, _ = _images_and_cams()
    out = fg_bg_images(images, cams, torch.zeros(2, 3), delta=0.5)
    assert out.x_fg.shape == (0, 3, 3, 3) and out.x_bg.shape == (0, 3, 3, 3)
    loss = prototype_similarity_loss(out.x_fg.flatten(1), out.x_bg.flatten(1), out.class_index, torch.randn(3, 2, 27))
    loss.total.backward()
    assert loss.total.item() == 0.0 and not torch.isnan(loss.total)


def _cos(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


def _similarity_ref(fg, bg, cls, protos, t):
    n_classes, k_count = protos.shape[0], protos.shape[1]

    def s(feat, c):
        return sum(_cos(feat.tolist(), protos[c, k].tolist()) for k in range(k_count)) / k_count

    fgs, bgs = [], []
    for n, c in enumerate(cls.tolist()):
        own = math.exp(s(fg[n], c) / t)
        neg = sum(math.exp(s(fg[n], j) / t) for j in range(n_classes) if j != c)
        fgs.append(-math.log(own / (own + neg)))
        pos = sum(math.exp(s(bg[n], j) / t) for j in range(n_classes) if j != c) / (n_classes - 1)
        own_bg = math.exp(s(bg[n], c) / t)
        bgs.append(-math.log(pos / (pos + own_bg)))
    return sum(fgs) / len(fgs), sum(bgs) / len(bgs)


def test_prototype_similarity_loss_matches_loop_reference() -> None:
    g = torch.Generator().manual_seed(2)
    fg, bg = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    protos = torch.randn(3, 2, 5, generator=g)
    cls = torch.tensor([0, 2, 1, 2])
    got = prototype_similarity_loss(fg, bg, cls, protos, temperature=0.3, fg_weight=1.0, bg_weight=0.5)
    want_fg, want_bg = _similarity_ref(fg, bg, cls, protos, 0.3)
    assert got.l_fgs.item() == pytest.approx(want_fg, rel=1e-5)
    assert got.l_bgs.item() == pytest.approx(want_bg, rel=1e-5)
    assert got.total.item() == pytest.approx(want_fg + 0.5 * want_bg, rel=1e-5)


def test_prototype_similarity_loss_prefers_matching_foreground() -> None:
    protos = torch.eye(3)[:, None, :].repeat(1, 2, 1)  # class c prototypes = e_c
    cls = torch.tensor([0])
    good = prototype_similarity_loss(torch.eye(3)[:1], torch.eye(3)[1:2], cls, protos, 0.1)
    bad = prototype_similarity_loss(torch.eye(3)[1:2], torch.eye(3)[:1], cls, protos, 0.1)
    assert good.l_fgs < bad.l_fgs and good.l_bgs < bad.l_bgs


def test_prototype_similarity_loss_single_class_and_errors() -> None:
    feats = torch.randn(2, 4, requires_grad=True)
    out = prototype_similarity_loss(feats, feats, torch.tensor([0, 0]), torch.randn(1, 3, 4))
    assert out.l_fgs.item() == pytest.approx(0.0, abs=1e-6)  # no negatives: -log 1
    assert out.l_bgs.item() == 0.0
    out.total.backward()
    with pytest.raises(LossInputError):
        prototype_similarity_loss(feats, feats, torch.tensor([0, 3]), torch.randn(2, 3, 4))


def test_cam_area_regulariser_is_mean() -> None:
    cams = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    assert cam_area_regulariser(cams).item() == pytest.approx(2.0 / 4)
    assert cam_area_regulariser(torch.zeros(0, 2, 3, 3)).item() == 0.0
