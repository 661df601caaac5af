"""Value tests of protoseg.cams on hand-made tensors."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg import cams


def test_normalize_cams_relu_then_minmax_per_class():
    maps = torch.tensor([[[[-1.0, 2.0], [4.0, 0.0]], [[1.0, 3.0], [2.0, 5.0]]]])  # (1, 2, 2, 2)
    out = cams.normalize_cams(maps, eps=0.0)
    expected = torch.tensor([[[[0.0, 0.5], [1.0, 0.0]], [[0.0, 0.5], [0.25, 1.0]]]])
    assert torch.allclose(out, expected)


def test_normalize_cams_is_per_image():
    a = torch.tensor([[[[0.0, 10.0]]], [[[0.0, 2.0]]]])  # (2, 1, 1, 2): different ranges per image
    out = cams.normalize_cams(a, eps=0.0)
    assert torch.allclose(out, torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]]))


def test_fuse_cams_default_weights_apply_to_last_three_stages():
    c = 2
    stages = [torch.full((1, c, s, s), v) for s, v in ((8, 100.0), (4, 0.2), (2, 0.5), (1, 1.0))]
    fused = cams.fuse_cams(stages)
    assert fused.shape == (1, c, 4, 4)  # largest of the three fused stages; stage 1 is not fused
    assert torch.allclose(fused, torch.full_like(fused, 0.3 * 0.2 + 0.3 * 0.5 + 0.4 * 1.0))


def test_fuse_cams_upsamples_bilinear_before_weighting():
    v0, v1 = 0.2, 1.0
    low = torch.tensor([v0, v1]).view(1, 1, 1, 2)
    high = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 1, 4)
    fused = cams.fuse_cams([high, low], weights=(1.0, 3.0), size=(1, 4))
    # bilinear, half-pixel centres: sample positions -0.25, 0.25, 0.75, 1.25 (clamped)
    up = [v0, 0.75 * v0 + 0.25 * v1, 0.25 * v0 + 0.75 * v1, v1]
    expected = [0.25 * h + 0.75 * u for h, u in zip([1.0, 0.0, 0.0, 1.0], up)]
    assert torch.allclose(fused.flatten(), torch.tensor(expected))


def test_fuse_cams_rejects_too_many_weights():
    with pytest.raises(ValueError):
        cams.fuse_cams([torch.zeros(1, 1, 2, 2)], weights=(0.5, 0.5))


def test_label_and_score_gating():
    x = torch.ones(2, 3, 2, 2)
    labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 0.0]])
    gated = cams.label_gate(x, labels)
    assert torch.equal(gated.amax(dim=(2, 3)), labels)
    # sigmoid(log 9) = 0.9 keeps, sigmoid(log(7/3)) = 0.7 drops, sigmoid(-2) drops
    logits = torch.tensor([[math.log(9.0), math.log(7.0 / 3.0), -2.0], [5.0, math.log(9.0), 0.0]])
    s = cams.score_gate(x, logits, threshold=0.8)
    assert torch.equal(s.amax(dim=(2, 3)), torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))
    assert torch.allclose(cams.class_scores(logits)[0, :2], torch.tensor([0.9, 0.7]))


def test_pseudo_labels_argmax_ignore_never_background():
    c0 = torch.tensor([[0.9, 0.1, 0.1], [0.3, 0.0, 0.6]])
    c1 = torch.tensor([[0.2, 0.8, 0.1], [0.4, 0.2, 0.5]])
    x = torch.stack([c0, c1])[None]  # (1, 2, 2, 3): two candidate classes
    bg = torch.tensor([[[False, False, False], [False, False, True]]])
    # plain argmax (PBIP): weak pixels keep their best class, background only where the detector says
    assert torch.equal(cams.pseudo_labels(x, bg), torch.tensor([[[0, 1, 0], [1, 1, 2]]]))
    out = cams.pseudo_labels(x, bg, tau=0.25, tie_margin=0.15)
    # (0,2): max 0.1 <= tau -> 255; (1,1): max 0.2 -> 255; (1,0): 0.4 vs 0.3 tie -> 255; (1,2): glass -> 2
    assert out.dtype == torch.long
    assert torch.equal(out, torch.tensor([[[0, 1, 255], [255, 255, 2]]]))
    assert not bool((out == 2)[~bg].any())  # uncertainty never becomes background


def test_pseudo_labels_single_candidate_class_is_never_uncertain():
    x = torch.zeros(1, 3, 2, 2)
    x[0, 1] = torch.tensor([[0.0, 0.05], [0.5, 1.0]])  # one present class (label-gated), weak in places
    out = cams.pseudo_labels(x, None, tau=0.25, tie_margin=0.1)
    assert torch.equal(out, torch.ones(1, 2, 2, dtype=torch.long))
    assert torch.equal(cams.candidate_classes(x), torch.tensor([[False, True, False]]))


def test_glass_background_marks_glass_not_pale_gaps():
    g = torch.Generator().manual_seed(0)
    img = torch.empty(1, 3, 64, 64)
    img[:, 0], img[:, 1], img[:, 2] = 0.75, 0.45, 0.65  # pink tissue
    img += 0.03 * torch.randn(img.shape, generator=g)
    img[:, :, :, 40:] = 0.94  # glass on the right
    img[:, :, 10:12, 5:35] = 0.95  # a 2-px pale gap inside tissue: stays tissue
    bg = cams.glass_background(img.clamp(0, 1), open_radius=0.03, min_size=50)
    assert bg.dtype == torch.bool and bg.shape == (1, 64, 64)
    assert bg[0, :, 42:].all()
    assert not bg[0, :, :38].any()
    with pytest.raises(ValueError, match="glass_background"):
        cams.glass_background(torch.zeros(1, 1, 8, 8))


def test_pseudo_labels_with_ignore():
    x = torch.tensor([[[[0.9, 0.1], [0.2, 0.25]]], [[[0.0, 0.5], [0.1, 0.3]]]]).permute(1, 0, 2, 3)  # (1,2,2,2)
    out = cams.pseudo_labels_with_ignore(x, tau=0.25)
    assert torch.equal(out, torch.tensor([[[0, 1], [255, 1]]]))
    bg = torch.tensor([[[False, False], [True, False]]])
    assert torch.equal(cams.pseudo_labels_with_ignore(x, 0.25, bg), torch.tensor([[[0, 1], [2, 1]]]))


def test_confidence_is_max_over_classes():
    x = torch.tensor([[[[0.1, 0.7]], [[0.4, 0.2]]]])
    assert torch.allclose(cams.confidence(x), torch.tensor([[[0.4, 0.7]]]))


def test_flip_tta_unflips_outputs():
    x = torch.arange(12, dtype=torch.float32).view(1, 1, 3, 4)
    ramp = torch.tensor([0.0, 1.0, 2.0, 3.0]).view(1, 1, 1, 4)  # depends on column position only
    out = cams.flip_tta(lambda t: t + ramp, x)
    # identity: x + r ; h-flip: x + r reversed ; v-flip: x + r
    expected = x + (2 * ramp + ramp.flip(-1)) / 3
    assert torch.allclose(out, expected)
    assert torch.allclose(cams.flip_tta(lambda t: 2 * t, x, flips=("h", "v", "hv")), 2 * x)
