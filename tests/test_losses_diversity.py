"""Tests for the LPD diversity regulariser, its warm-up and pseudo region, against loop references."""

from __future__ import annotations

import math
import statistics

import pytest
import torch

from protoseg.losses import (
    DiversityKind,
    DiversityWarmup,
    LossInputError,
    lpd_pseudo_region,
    prototype_diversity_loss,
)


def _pixels(sim_maps, region, b, c):
    k = sim_maps.shape[2]
    coords = [(y, x) for y in range(region.shape[2]) for x in range(region.shape[3]) if bool(region[b, c, y, x])]
    return [[float(sim_maps[b, c, i, y, x]) for (y, x) in coords] for i in range(k)]


def _jeffrey_ref(rows: list[list[float]], t: float) -> float:
    dists = []
    for row in rows:
        exps = [math.exp(v / t) for v in row]
        dists.append([e / sum(exps) for e in exps])
    vals = []
    for i in range(len(dists)):
        for j in range(i + 1, len(dists)):
            jd = sum((p - q) * (math.log(p) - math.log(q)) for p, q in zip(dists[i], dists[j]))
            vals.append(math.exp(-jd))
    return sum(vals) / len(vals)


def _corr_ref(rows: list[list[float]]) -> float:
    vals = []
    for i in range(len(rows)):
        for j in range(i + 1, len(rows)):
            vals.append(statistics.correlation(rows[i], rows[j]) ** 2)
    return sum(vals) / len(vals)


def _case():
    g = torch.Generator().manual_seed(3)
    sim_maps = torch.randn(2, 3, 3, 3, 3, generator=g)
    region = torch.rand(2, 3, 3, 3, generator=g) > 0.4
    region[1, 1] = False
    region[1, 1, 0, 0] = True  # a single pixel: pair is skipped
    labels = torch.tensor([[1.0, 0.0, 1.0], [1.0, 1.0, 0.0]])
    return sim_maps, region, labels


@pytest.mark.parametrize("kind", list(DiversityKind))
def test_diversity_matches_loop_reference(kind: DiversityKind) -> None:
    sim_maps, region, labels = _case()
    t = 0.5
    got = prototype_diversity_loss(sim_maps, region, labels, kind, temperature=t)
    pairs = [(0, 0), (0, 2), (1, 0)]  # present and >= 2 region pixels
    assert all(int(region[b, c].sum()) >= 2 for b, c in pairs)
    if kind is DiversityKind.JEFFREY:
        per = [_jeffrey_ref(_pixels(sim_maps, region, b, c), t) for b, c in pairs]
    else:
        per = [_corr_ref(_pixels(sim_maps, region, b, c)) for b, c in pairs]
    assert got.item() == pytest.approx(sum(per) / len(per), rel=1e-4)


@pytest.mark.parametrize("kind", ["jeffrey", "correlation"])
def test_diverse_prototypes_are_penalised_less_than_duplicates(kind: str) -> None:
    region = torch.ones(1, 1, 3, 3, dtype=torch.bool)
    labels = torch.ones(1, 1)
    base = torch.zeros(3, 3)
    diverse = torch.stack([base.clone(), base.clone()])
    diverse[0, 0, :] = 3.0  # prototype 0 fires on the top row
    diverse[1, 2, :] = 3.0  # prototype 1 fires on the bottom row
    duplicate = torch.stack([diverse[0], diverse[0]])
    low = prototype_diversity_loss(diverse[None, None], region, labels, kind)
    high = prototype_diversity_loss(duplicate[None, None], region, labels, kind)
    assert high.item() == pytest.approx(1.0, abs=1e-5)  # identical prototypes: exp(0) / corr 1
    assert low.item() < 0.5 * high.item()


@pytest.mark.parametrize("kind", list(DiversityKind))
def test_diversity_empty_inputs_and_gradients(kind: DiversityKind) -> None:
    sim_maps, region, labels = _case()
    sim_maps.requires_grad_(True)
    none_present = prototype_diversity_loss(sim_maps, region, torch.zeros(2, 3), kind)
    none_present.backward()
    assert none_present.item() == 0.0
    empty_region = torch.zeros_like(region)
    empty_region[0, 0] = region[0, 0]
    loss = prototype_diversity_loss(sim_maps, empty_region, labels, kind)
    sim_maps.grad = None
    loss.backward()
    grad = sim_maps.grad
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert grad[0, 0].abs().sum() > 0 and grad[1].abs().sum() == 0


def test_diversity_rejects_bad_shapes() -> None:
    with pytest.raises(LossInputError, match="region"):
        prototype_diversity_loss(torch.zeros(1, 2, 3, 4, 4), torch.ones(1, 2, 3, 3, dtype=torch.bool), torch.ones(1, 2))


def test_warmup_schedule() -> None:
    sched = DiversityWarmup(weight=0.5, warmup_steps=10)
    assert [sched(s) for s in (0, 9, 10, 500)] == [0.0, 0.0, 0.5, 0.5]
    ramp = DiversityWarmup(weight=0.5, warmup_steps=2, ramp_steps=4)
    assert [ramp(s) for s in range(8)] == pytest.approx([0, 0, 0.125, 0.25, 0.375, 0.5, 0.5, 0.5])
    with pytest.raises(LossInputError):
        DiversityWarmup(weight=-1.0)


def test_lpd_pseudo_region_by_hand() -> None:
    cams = torch.tensor([[[[0.1, 0.5, 0.3, 0.2]], [[0.15, 0.4, 0.6, 0.1]]]])  # (1, 2, 1, 4)
    region = lpd_pseudo_region(cams, background_score=0.2)
    assert region.dtype == torch.bool
    # px0: background (0.2 beats both); px1: class 0; px2: class 1; px3: tie with bg -> bg
    assert region[0, 0, 0].tolist() == [False, True, False, False]
    assert region[0, 1, 0].tolist() == [False, False, True, False]
    only_first = lpd_pseudo_region(cams, 0.2, labels=torch.tensor([[1.0, 0.0]]))
    assert only_first[0, 0, 0].tolist() == [False, True, True, False]
    assert not only_first[0, 1].any()
