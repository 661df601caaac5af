"""Multi-scale CAM inference for pseudo-masks (issue 24, ``stage1.pseudo.scales``): stage maps of several input
scales averaged at the first scale's map size; one scale is the plain forward."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from protoseg.config import ConfigError, load_config
from protoseg.models.classnet import ClassNet, ClassNetConfig
from protoseg.train.evaluation import pseudo_masks


def _net(head: str = "cam") -> ClassNet:
    torch.manual_seed(0)
    cfg = ClassNetConfig(backbone="resnet18", head=head, num_classes=3, output_stride=32)
    return ClassNet(cfg).eval()


def test_one_scale_is_the_plain_forward() -> None:
    net, x = _net(), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        a, b = net(x), net.forward_multiscale(x, (1.0,))
    assert torch.equal(a.maps[0], b.maps[0]) and torch.equal(a.logits[0], b.logits[0])


@pytest.mark.parametrize("head", ["cam", "learnable"])
def test_maps_are_the_mean_over_scales_at_the_first_scales_size(head: str) -> None:
    net, x = _net(head), torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net.forward_multiscale(x, (1.0, 2.0))
        one = net(x)
        two = net(F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False))
    for i, m in enumerate(out.maps):
        assert m.shape == one.maps[i].shape  # every stage map at its first-scale size
        expected = (one.maps[i] + F.interpolate(two.maps[i], size=m.shape[-2:], mode="bilinear")) / 2
        assert torch.allclose(m, expected, atol=1e-5)
    assert torch.equal(out.logits[-1], one.logits[-1])  # the class gate reads the first scale's scores


def test_pseudo_masks_use_the_configured_scales() -> None:
    """The exported / label-gated pseudo-mask follows the averaged CAMs, and differs from one pass."""
    net = _net()
    torch.manual_seed(1)
    x = torch.rand(4, 3, 64, 64) * 0.5  # dark: no glass
    labels = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [0.0, 1.0, 1.0], [1.0, 0.0, 1.0]])
    one = load_config(None, [])
    multi = load_config(None, ["stage1.pseudo.scales=[1.0, 1.5, 2.0]"])
    assert multi.stage1.pseudo.scales == (1.0, 1.5, 2.0)
    with torch.no_grad():
        m1, _ = pseudo_masks(net, x, labels, one)
        m3, _ = pseudo_masks(net, x, labels, multi)
        out = net.forward_multiscale(x, (1.0, 1.5, 2.0))
        cams = net.fused_cams(out, (64, 64), labels=labels, norm=multi.stage1.pseudo.cams)
    assert m3.shape == m1.shape == (4, 64, 64)
    assert not bool((m3 == 3).any())  # no glass in these images
    decided = m3 != 255  # uncertain pixels (tie margin) are ignored
    best = cams.masked_fill(labels[:, :, None, None] == 0, float("-inf")).argmax(1)
    assert bool(decided.float().mean() > 0.5) and torch.equal(m3[decided], best[decided])  # the averaged CAMs
    assert not torch.equal(m1, m3)  # the extra scales change the mask (else the option did nothing)
    assert bool((labels.gather(1, m3.flatten(1).clamp(max=2)) > 0).all())  # only labelled classes


@pytest.mark.parametrize("value", ["[]", "[0.1]", "[1.0, 9.0]", "[nan]"])
def test_scales_are_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="stage1.pseudo.scales"):
        load_config(None, [f"stage1.pseudo.scales={value}"])
