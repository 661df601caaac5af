"""Tests for the PLIM language-image matching losses and the stage-2 (noise-reduced) CE."""

from __future__ import annotations

import math

import pytest
import torch

from protoseg.losses import (
    LossInputError,
    PromptTemplates,
    SimilarityMapping,
    noise_reduced_ce,
    plim_losses,
    segmentation_ce,
)


def _sim_ref(a: list[float], b: list[float], eps: float, affine: bool = False) -> float:
    cos = sum(x * y for x, y in zip(a, b)) / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))
    if affine:
        cos = (cos + 1) / 2
    return min(max(cos, eps), 1 - eps)


def _plim_ref(t, b, q, cls, eps, affine=False):
    n_classes = q.shape[0]
    ttp = btp = tbp = 0.0
    for n, k in enumerate(cls.tolist()):
        ttp += -math.log(_sim_ref(t[n].tolist(), q[k].tolist(), eps, affine))
        btp += -math.log(1 - _sim_ref(b[n].tolist(), q[k].tolist(), eps, affine))
        for j in range(n_classes):
            if j != k:
                tbp += -math.log(1 - _sim_ref(t[n].tolist(), q[j].tolist(), eps, affine))
    n = len(cls)
    return ttp / n, btp / n, tbp / n


@pytest.mark.parametrize("mapping", list(SimilarityMapping))
def test_plim_matches_loop_reference(mapping: SimilarityMapping) -> None:
    g = torch.Generator().manual_seed(6)
    t, b = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    q = torch.randn(4, 5, generator=g)
    t[0] = q[2] * 3.0  # cos 1 with another class -> clamped to 1 - eps in L_TBP
    cls = torch.tensor([1, 3, 1])
    eps = 1e-3
    got = plim_losses(t, b, q, cls, eps=eps, weights=(10, 24, 1), mapping=mapping)
    want = _plim_ref(t, b, q, cls, eps, affine=mapping is SimilarityMapping.AFFINE)
    assert got.l_ttp.item() == pytest.approx(want[0], rel=1e-4)
    assert got.l_btp.item() == pytest.approx(want[1], rel=1e-4)
    assert got.l_tbp.item() == pytest.approx(want[2], rel=1e-4)
    total = 10 * want[0] + 24 * want[1] + want[2]
    assert got.total.item() == pytest.approx(total, rel=1e-4)


def test_plim_clamp_keeps_logs_finite() -> None:
    q = torch.eye(2)
    t = torch.tensor([[-1.0, 0.0]])  # cos(t, q0) = -1 -> clamped to eps
    b = torch.tensor([[1.0, 0.0]])  # cos(b, q0) = 1 -> clamped to 1 - eps
    eps = 1e-4
    out = plim_losses(t, b, q, torch.tensor([0]), eps=eps)
    assert out.l_ttp.item() == pytest.approx(-math.log(eps), rel=1e-4)
    assert out.l_btp.item() == pytest.approx(-math.log(eps), rel=1e-2)
    assert out.l_tbp.item() == pytest.approx(-math.log(1 - eps), rel=1e-2, abs=1e-6)
    assert all(math.isfinite(v.item()) for v in (out.total, out.l_ttp, out.l_btp, out.l_tbp))


def test_plim_empty_and_gradient() -> None:
    t = torch.randn(0, 4, requires_grad=True)
    out = plim_losses(t, torch.randn(0, 4), torch.randn(3, 4), torch.zeros(0, dtype=torch.long))
    out.total.backward()
    assert out.total.item() == 0.0
    t = torch.tensor([[1.0, 0.5, 0.2]], requires_grad=True)
    plim_losses(t, torch.randn(1, 3), torch.eye(3), torch.tensor([0])).total.backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


def test_prompt_templates_and_text_encoding() -> None:
    prompts = PromptTemplates()
    assert prompts.prompts(["tumor", "stroma"]) == [
        "a histopathology image of tumor",
        "a histopathology image of stroma",
    ]

    class FakeText:
        def encode_text(self, texts: list[str]) -> torch.Tensor:
            return torch.tensor([[float(len(s)), 1.0] for s in texts])

    two = PromptTemplates(("a {}", "an image of {}"))
    assert two.prompts(["x"]) == ["a x", "an image of x"]
    q = two.encode(FakeText(), ["ab", "c"])
    # class 0 prompts have lengths 4 and 14; mean of the unit vectors, renormalised
    v1, v2 = [4.0, 1.0], [14.0, 1.0]
    u = [(v1[i] / math.hypot(*v1) + v2[i] / math.hypot(*v2)) / 2 for i in range(2)]
    assert q[0].tolist() == pytest.approx([x / math.hypot(*u) for x in u], rel=1e-5)
    with pytest.raises(LossInputError, match="placeholder"):
        PromptTemplates(("no placeholder",))


def _ce_ref(logits, target, conf=None, thr=0.0, drop=0.0):
    rows = []
    b_n, c_n, h_n, w_n = logits.shape
    for b in range(b_n):
        for y in range(h_n):
            for x in range(w_n):
                lab = int(target[b, y, x])
                if lab == 255:
                    continue
                zs = [float(logits[b, c, y, x]) for c in range(c_n)]
                m = max(zs)
                ce = m + math.log(sum(math.exp(z - m) for z in zs)) - zs[lab]
                w = 1.0 if conf is None else min(max(float(conf[b, y, x]), 0.0), 1.0)
                if conf is not None and float(conf[b, y, x]) < thr:
                    continue
                rows.append((ce, w))
    n_drop = int(drop * len(rows))
    rows.sort(key=lambda r: r[0])
    kept = rows[: len(rows) - n_drop]
    return sum(ce * w for ce, w in kept) / sum(w for _, w in kept)


def _ce_case():
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(2, 4, 3, 3, generator=g)
    target = torch.randint(0, 4, (2, 3, 3), generator=g)
    target[0, 0, 0] = 255
    target[1, 2, 1] = 255
    conf = torch.rand(2, 3, 3, generator=g) * 1.2  # some values above 1 get clamped
    return logits, target, conf


def test_plain_and_noise_reduced_ce_match_reference() -> None:
    logits, target, conf = _ce_case()
    assert segmentation_ce(logits, target).item() == pytest.approx(_ce_ref(logits, target), rel=1e-5)
    assert noise_reduced_ce(logits, target).item() == pytest.approx(_ce_ref(logits, target), rel=1e-5)
    got = noise_reduced_ce(logits, target, conf, confidence_threshold=0.3, drop_fraction=0.25)
    assert got.item() == pytest.approx(_ce_ref(logits, target, conf, 0.3, 0.25), rel=1e-5)


def test_noise_reduced_ce_edge_cases() -> None:
    logits, target, conf = _ce_case()
    logits.requires_grad_(True)
    all_ignored = torch.full_like(target, 255)
    for loss in (
        segmentation_ce(logits, all_ignored),
        noise_reduced_ce(logits, all_ignored, conf),
        noise_reduced_ce(logits, target, torch.zeros_like(conf)),
    ):
        loss.backward()
        assert loss.item() == 0.0 and not torch.isnan(loss)
    bad = target.clone()
    bad[0, 1, 1] = 7
    with pytest.raises(LossInputError, match="target values"):
        noise_reduced_ce(logits, bad)
    # low-resolution logits are upsampled to the target: constant logits stay constant
    low = torch.tensor([2.0, 0.0, 0.0, 0.0])[None, :, None, None].expand(1, 4, 2, 2)
    want = -math.log(math.exp(2) / (math.exp(2) + 3))
    assert segmentation_ce(low, torch.zeros(1, 4, 4, dtype=torch.long)).item() == pytest.approx(want, rel=1e-6)
