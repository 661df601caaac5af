"""Backbones, ClassNet, SegNet and the model factory with tiny random-init models (offline)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from protoseg import cams as cam_ops
from protoseg.models import (
    BackboneError,
    ClassNet,
    ClassNetConfig,
    ModelConfigError,
    SegNet,
    SegNetConfig,
    WeightsError,
    build_backbone,
    build_model,
    model_config,
)
from protoseg.models.classnet import MergeKind

SIZE = 64


def tiny_cfg(head: str, **kw) -> ClassNetConfig:
    base = dict(backbone="resnet18", head=head, num_classes=3, k=2, proto_dim=8, projector_hidden=8)
    base.update(kw)
    return ClassNetConfig(**base)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- backbones


def test_backbone_resnet18_strides_and_random_init_log(caplog):
    with caplog.at_level(logging.INFO, logger="protoseg.models.backbone"):
        bb = build_backbone("resnet18")
    assert bb.channels == (64, 128, 256, 512) and bb.reductions == (4, 8, 16, 32)
    feats = bb(torch.rand(1, 3, SIZE, SIZE))
    assert [tuple(f.shape) for f in feats] == [(1, c, SIZE // r, SIZE // r) for c, r in zip(bb.channels, bb.reductions)]
    msgs = [r.getMessage() for r in caplog.records if "random init" in r.getMessage()]
    assert len(msgs) == 1 and "model.weights" in msgs[0]


def test_backbone_swin_nhwc_is_permuted_to_nchw():
    tiny = dict(img_size=SIZE, window_size=4, embed_dim=8, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    bb = build_backbone("swin_tiny_patch4_window7_224", **tiny)
    assert bb.channels_last_output
    x = torch.rand(1, 3, SIZE, SIZE)
    feats = bb(x)
    assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4), (1, 64, 2, 2)]
    raw = bb.model(x)[0]  # NHWC from timm
    assert torch.equal(feats[0][0, :, 3, 5], raw[0, 3, 5, :])


def test_backbone_unknown_name():
    with pytest.raises(BackboneError, match="model.backbone"):
        build_backbone("no_such_model_xyz")


def test_missing_weights_file_names_setting():
    with pytest.raises(WeightsError, match="model.weights"):
        build_backbone("resnet18", weights="/missing/file.pth")


def test_hub_failure_names_setting(monkeypatch):
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("network unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="model.weights"):
        build_backbone("resnet18", weights="hub")


@pytest.mark.parametrize("fmt", ["pth", "safetensors"])
def test_local_weights_load_and_strip_classifier(tmp_path, caplog, fmt):
    import timm

    full = timm.create_model("resnet18", num_classes=7)  # has fc.* classifier keys
    state = {f"module.{k}": v for k, v in full.state_dict().items()}  # DDP-style prefix
    path = tmp_path / f"w.{fmt}"
    if fmt == "pth":
        torch.save({"state_dict": state}, path)
    else:
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with caplog.at_level(logging.INFO, logger="protoseg.models.backbone"):
        bb = build_backbone("resnet18", weights=str(path))
    assert torch.equal(bb.model.conv1.weight, full.conv1.weight)
    assert torch.equal(bb.model.layer4[1].bn2.running_var, full.layer4[1].bn2.running_var)
    line = next(r.getMessage() for r in caplog.records if "loaded" in r.getMessage())
    assert "0 missing, 0 unexpected, 2 classifier keys dropped" in line


def test_wrong_architecture_weights(tmp_path):
    import timm

    path = tmp_path / "w.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(WeightsError, match="model.weights"):
        build_backbone("resnet50", weights=str(path))


# ----------------------------------------------------------------------------- ClassNet


def test_classnet_default_pvt_v2_b1_bank(images):
    protos = torch.randn(4, 3, 512)
    net = ClassNet(ClassNetConfig(), prototypes=protos)  # pvt_v2_b1, bank head, 4 classes, K=3
    assert net.backbone.channels == (64, 128, 320, 512)
    out = net(images)
    for i, (logit, cmap, sub) in enumerate(zip(out.logits, out.maps, out.subcluster_maps)):
        s = SIZE // (4 * 2**i)
        assert logit.shape == (2, 4) and cmap.shape == (2, 4, s, s) and sub.shape == (2, 4, 3, s, s)
        assert torch.allclose(logit, cmap.mean(dim=(2, 3)), atol=1e-5)


def test_classnet_maps_match_reference(images):
    torch.manual_seed(0)
    net = ClassNet(tiny_cfg("learnable"))
    net.train()
    out = net(images)
    feats = net.backbone((images - net.mean) / net.std)
    projected = net.projector(net.prototypes())
    for i in range(4):
        assert torch.allclose(out.features[i], feats[i], atol=1e-5)
        f = feats[i] / feats[i].norm(dim=1, keepdim=True)
        ref = torch.einsum("bchw,nkc->bnkhw", f, projected[i]) * (1 / 0.07)
        assert torch.allclose(out.subcluster_maps[i], ref, atol=1e-4)
        assert torch.allclose(out.maps[i], ref.mean(dim=2), atol=1e-4)  # training: mean merge
        gap = ref.mean(dim=2).sum(dim=(2, 3)) / (ref.shape[-1] * ref.shape[-2])
        assert torch.allclose(out.logits[i], gap, atol=1e-4)
    net.eval()
    with torch.no_grad():
        ev = net(images)
        w = torch.softmax(ev.subcluster_maps[3], dim=2)
        assert torch.allclose(ev.maps[3], (w * ev.subcluster_maps[3]).sum(2), atol=1e-5)
        assert torch.allclose(net(images, merge=MergeKind.MEAN).maps[3], ev.subcluster_maps[3].mean(2), atol=1e-5)


def test_gradients_learnable_vs_bank(images):
    net = ClassNet(tiny_cfg("learnable"))
    loss = sum(F.multilabel_soft_margin_loss(lg, torch.ones_like(lg)) for lg in net(images).logits)
    loss.backward()
    nonzero = lambda p: p.grad is not None and p.grad.abs().sum() > 0  # noqa: E731
    assert nonzero(net.backbone.model.conv1.weight)
    assert all(nonzero(p) for p in net.projector.parameters())
    assert nonzero(net.prototypes.prototypes) and nonzero(net.logit_scale)

    bank = ClassNet(tiny_cfg("bank"), prototypes=torch.randn(3, 2, 8))
    assert not any(p is bank.prototypes.prototypes for p in bank.parameters())
    sum(lg.sum() for lg in bank(images).logits).backward()
    assert bank.prototypes.prototypes.grad is None and not bank.prototypes.prototypes.requires_grad
    assert all(nonzero(p) for p in bank.projector.parameters())
    # timm zero-inits each residual block's last BN gain, so test the stem and that gain
    assert nonzero(bank.backbone.model.conv1.weight) and nonzero(bank.backbone.model.layer4[1].bn2.weight)


def test_cam_head_logits_and_cams(images):
    net = ClassNet(tiny_cfg("cam")).eval()
    with torch.no_grad():
        out = net(images)
        feat = net.backbone((images - net.mean) / net.std)[-1]
        w = net.classifier.weight[:, :, 0, 0]  # (C, c)
        ref_map = torch.einsum("bchw,nc->bnhw", feat, w)
        assert len(out.maps) == 1 and out.subcluster_maps is None
        assert torch.allclose(out.maps[0], ref_map, atol=1e-4)
        assert torch.allclose(out.logits[0], ref_map.mean(dim=(2, 3)), atol=1e-4)
        labels = torch.tensor([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])
        cams = net.cams(images, labels)
        # reference: relu, min-max per image/class, bilinear to input size, label gate
        r = ref_map.clamp_min(0)
        lo, hi = r.amin(dim=(2, 3), keepdim=True), r.amax(dim=(2, 3), keepdim=True)
        ref = F.interpolate((r - lo) / (hi - lo + 1e-5), size=(SIZE, SIZE), mode="bilinear")
        assert torch.allclose(cams, ref * labels[:, :, None, None], atol=1e-4)


def test_predict_background_channel_and_mode_restored(images):
    net = ClassNet(tiny_cfg("learnable", score_threshold=0.99))
    net.train()
    pred = net.predict(images)
    assert net.training  # mode restored
    assert pred.shape == (2, 4, SIZE, SIZE)
    assert pred.min() >= 0 and pred.max() <= 1 + 1e-6
    glass = cam_ops.glass_background(images)
    assert torch.equal(pred[:, 3] == 1, glass)  # background only where the glass detector says so
    assert torch.all(pred[:, :3][glass[:, None].expand(-1, 3, -1, -1)] == 0)
    # tissue pixels always get a class: at least the top-scoring one survives even a 0.99 score gate
    tissue = ~glass
    assert torch.all(pred.argmax(1)[tissue] < 3)


def test_predict_background_is_glass_not_low_cam():
    """A patch half tissue, half glass: the glass half is background, all tissue pixels get a class."""
    net = ClassNet(tiny_cfg("learnable", score_threshold=0.5))
    img = torch.ones(1, 3, SIZE, SIZE)
    g = torch.Generator().manual_seed(0)
    img[:, :, :, : SIZE // 2] = torch.tensor([0.55, 0.25, 0.5])[:, None, None] + 0.05 * torch.rand(
        3, SIZE, SIZE // 2, generator=g
    )
    cls = net.predict(img).argmax(1)[0]
    assert torch.all(cls[:, : SIZE // 2 - 4] < 3)
    assert torch.all(cls[:, SIZE // 2 + 4 :] == 3)


# ----------------------------------------------------------------------------- SegNet


def test_segnet_shapes_softmax_and_flip_tta(images):
    net = SegNet(SegNetConfig(backbone="pvt_v2_b0", num_classes=3, decoder_dim=16))
    logits = net(images)
    assert logits.shape == (2, 4, SIZE, SIZE)
    net.eval()
    p = net.predict(images)
    assert torch.allclose(p.sum(dim=1), torch.ones(2, SIZE, SIZE), atol=1e-5)
    with torch.no_grad():
        ref = (
            torch.softmax(net(images), 1)
            + torch.softmax(net(images.flip(-1)), 1).flip(-1)
            + torch.softmax(net(images.flip(-2)), 1).flip(-2)
            + torch.softmax(net(images.flip((-2, -1))), 1).flip((-2, -1))
        ) / 4  # the flips of Predictor's tta: eval --tta scores what predict --tta gives
    assert torch.allclose(net.predict(images, flip_tta=True), ref, atol=1e-5)
    assert not torch.allclose(ref, p, atol=1e-4)


# ----------------------------------------------------------------------------- factory


@pytest.mark.parametrize(
    "cfg",
    [
        {
            "kind": "classnet",
            "backbone": "resnet18",
            "head": "bank",
            "num_classes": 3,
            "k": 2,
            "proto_dim": 8,
            "projector_hidden": 8,
        },
        {"kind": "classnet", "backbone": "resnet18", "head": "cam", "num_classes": 2},
        {"kind": "segnet", "backbone": "pvt_v2_b0", "num_classes": 3, "decoder_dim": 16},
    ],
)
def test_factory_round_trip(cfg, images):
    kwargs = {"prototypes": torch.randn(3, 2, 8)} if cfg.get("head") == "bank" else {}
    model = build_model(cfg, **kwargs).eval()
    plain = json.loads(json.dumps(model_config(model)))  # must be plain JSON data
    assert plain["kind"] == cfg["kind"] and plain["weights"] is None
    rebuilt = build_model(plain)
    rebuilt.load_state_dict(model.state_dict())
    rebuilt.eval()
    with torch.no_grad():
        a, b = model(images), rebuilt(images)
    if cfg["kind"] == "segnet":
        assert torch.equal(a, b)
    else:
        assert all(torch.equal(x, y) for x, y in zip(a.logits, b.logits))
        assert model_config(rebuilt) == plain


def test_factory_errors():
    with pytest.raises(ModelConfigError, match="kind"):
        build_model({"kind": "unet"})
    with pytest.raises(ModelConfigError, match="unknown classnet config fields"):
        build_model({"kind": "classnet", "backbone": "resnet18", "colour": 1})
    with pytest.raises(ModelConfigError):
        build_model({"kind": "classnet", "head": "nonsense"})


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("head", ["bank", "learnable", "cam"])
def test_cuda_amp_forward_backward(head):
    kw = {"prototypes": torch.randn(3, 2, 8)} if head == "bank" else {}
    net = ClassNet(tiny_cfg(head), **kw).cuda()
    seg = SegNet(SegNetConfig(backbone="resnet18", num_classes=3, decoder_dim=16)).cuda()
    x = torch.rand(2, 3, SIZE, SIZE, device="cuda")
    with torch.autocast("cuda"):
        out = net(x)
        loss = sum(F.multilabel_soft_margin_loss(lg.float(), torch.ones_like(lg.float())) for lg in out.logits)
        loss = loss + F.cross_entropy(seg(x).float(), torch.zeros(2, SIZE, SIZE, dtype=torch.long, device="cuda"))
    loss.backward()
    assert torch.isfinite(loss)
    assert net.backbone.model.conv1.weight.grad is not None and seg.decoder.classify.weight.grad is not None
    pred = net.predict(x)
    assert pred.device.type == "cuda" and pred.shape == (2, 4, SIZE, SIZE) and torch.isfinite(pred).all()
