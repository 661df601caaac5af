"""Value tests of prototype heads, cosine maps and sub-cluster merging (no backbone needed)."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg.models.classnet import MergeKind, cosine_maps, merge_subclusters
from protoseg.models.heads import BankPrototypes, LearnablePrototypes, PrototypeProjector


def test_cosine_maps_match_explicit_loops_with_scale():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 2, 3, generator=g)
    protos = torch.randn(2, 2, 3, generator=g)
    protos = protos / protos.norm(dim=-1, keepdim=True)
    scale = 1.0 / 0.07
    out = cosine_maps(feats, protos, scale)
    assert out.shape == (2, 2, 2, 2, 3)
    for b in range(2):
        for n in range(2):
            for k in range(2):
                for y in range(2):
                    for x in range(3):
                        f = [float(v) for v in feats[b, :, y, x]]
                        p = [float(v) for v in protos[n, k]]
                        cos = sum(a * c for a, c in zip(f, p)) / math.sqrt(sum(a * a for a in f))
                        assert out[b, n, k, y, x].item() == pytest.approx(scale * cos, rel=1e-5, abs=1e-5)


def test_merge_mean_and_softmax_weighted_max():
    m = torch.tensor([1.0, 3.0, -2.0]).view(1, 1, 3, 1, 1)  # one pixel, one class, K = 3
    assert merge_subclusters(m, MergeKind.MEAN).item() == pytest.approx(2.0 / 3.0)
    e = [math.exp(v) for v in (1.0, 3.0, -2.0)]
    expected = sum(w / sum(e) * v for w, v in zip(e, (1.0, 3.0, -2.0)))
    assert merge_subclusters(m, "softmax_max").item() == pytest.approx(expected, rel=1e-6)
    # a large scale makes the weighted sum approach the max over sub-clusters
    assert merge_subclusters(m * 50, MergeKind.SOFTMAX_MAX).item() == pytest.approx(150.0, rel=1e-6)
    assert merge_subclusters(torch.zeros(2, 3, 4, 5, 6)).shape == (2, 3, 5, 6)


def test_bank_prototypes_are_a_fixed_buffer():
    p = torch.arange(12, dtype=torch.float32).view(2, 2, 3)
    bank = BankPrototypes.from_tensor(p)
    assert list(bank.parameters()) == []
    assert not bank().requires_grad
    assert torch.equal(bank(), p)
    assert "prototypes" in bank.state_dict()
    with pytest.raises(ValueError, match="num_classes/k/proto_dim"):
        bank.set_prototypes(torch.zeros(3, 2, 3))
    bank.set_prototypes(p + 1)
    assert torch.equal(bank(), p + 1)


def test_learnable_prototypes_init_and_grad():
    init = torch.arange(12, dtype=torch.float32).view(2, 2, 3)
    lp = LearnablePrototypes(2, 2, 3, init=init)
    assert torch.equal(lp(), init)
    lp().sum().backward()
    assert torch.equal(lp.prototypes.grad, torch.ones(2, 2, 3))
    tiled = LearnablePrototypes(2, 5, 3, init=init)()
    assert tiled.shape == (2, 5, 3)
    assert torch.equal(tiled[:, :2], init)
    assert torch.allclose(tiled[:, 2:4], init, atol=0.5)  # jittered copies
    assert not torch.equal(tiled[:, 2:4], init)
    with pytest.raises(ValueError):
        LearnablePrototypes(3, 2, 3, init=init)
    rnd = LearnablePrototypes(4, 10, 8)()
    assert rnd.shape == (4, 10, 8) and rnd.requires_grad


def test_projector_matches_manual_mlp_and_is_unit_norm():
    torch.manual_seed(0)
    proj = PrototypeProjector(in_dim=4, hidden=5, out_dims=(3, 6))
    p = torch.randn(2, 3, 4)
    outs = proj(p)
    assert [tuple(o.shape) for o in outs] == [(2, 3, 3), (2, 3, 6)]
    for mlp, out in zip(proj.mlps, outs):
        w1, b1, w2, b2 = mlp[0].weight, mlp[0].bias, mlp[2].weight, mlp[2].bias
        h = (p @ w1.T + b1).clamp_min(0) @ w2.T + b2
        ref = h / h.pow(2).sum(-1, keepdim=True).sqrt()
        assert torch.allclose(out, ref, atol=1e-6)
        assert torch.allclose(out.norm(dim=-1), torch.ones(2, 3), atol=1e-6)
