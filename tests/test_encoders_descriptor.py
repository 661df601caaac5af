"""HEDescriptor: separates synthetic H&E textures, is frozen but differentiable, matches its pieces."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from protoseg.models.encoders import EncoderInputError, EncoderKind, EncoderSpec, HEDescriptor, build_encoder
from protoseg.models.encoders.he_features import RUIFROK_HED, optical_density, soft_histogram, stain_matrix_inverse

torch.set_num_threads(2)
SIZE = 128
TEXTURES = ("tumour", "lymphocytes", "stroma", "necrosis")


def _disks(rng: np.random.Generator, n: int, r_lo: float, r_hi: float, elong: float = 1.0) -> np.ndarray:
    """Union of n random (optionally elongated, randomly rotated) disks as a [0, 1] map."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    out = np.zeros((SIZE, SIZE), np.float32)
    for _ in range(n):
        cy, cx, r = rng.uniform(0, SIZE), rng.uniform(0, SIZE), rng.uniform(r_lo, r_hi)
        a = rng.uniform(0, math.pi)
        u = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
        v = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
        out = np.maximum(out, ((u / (r * elong)) ** 2 + (v / r) ** 2 <= 1).astype(np.float32))
    return out


def texture(kind: str, seed: int) -> np.ndarray:
    """(SIZE, SIZE, 3) uint8 H&E-like patch rendered by Beer-Lambert from H and E concentration maps."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    if kind == "tumour":  # dense large pale-ish nuclei on pink cytoplasm
        h = 0.9 * _disks(rng, 45, 5, 8, 1.3) + 0.05
        e = np.full_like(h, 0.35)
    elif kind == "lymphocytes":  # very dense small dark round nuclei
        h = 1.3 * _disks(rng, 260, 2.0, 3.0) + 0.05
        e = np.full_like(h, 0.15)
    elif kind == "stroma":  # oriented eosinophilic fibres with few spindle nuclei
        a = rng.uniform(0, math.pi)
        phase = (xx * math.cos(a) + yy * math.sin(a)) / 3.0 + 0.8 * np.sin(yy / 17.0 + xx / 23.0)
        e = 0.3 + 0.25 * (np.sin(phase) > 0.3)
        h = 0.8 * _disks(rng, 6, 1.5, 2.5, 4.0) + 0.03
    else:  # necrosis: pale, smooth, grainy debris
        e = 0.2 + 0.08 * rng.random((SIZE, SIZE)).astype(np.float32)
        h = 0.15 + 0.35 * _disks(rng, 60, 0.6, 1.4)
    scale = rng.uniform(0.85, 1.15, size=2)
    conc = np.stack([h * scale[0], e * scale[1], np.zeros_like(h)], axis=-1)
    m = np.asarray(RUIFROK_HED, np.float64)
    m = m / np.linalg.norm(m, axis=1, keepdims=True)
    od = conc @ m
    rgb = (256.0 * np.exp(-od) - 1.0) + rng.normal(0, 3, size=od.shape)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def descriptor() -> HEDescriptor:
    return HEDescriptor(input_size=SIZE)


def test_separates_synthetic_textures(descriptor: HEDescriptor) -> None:
    per = 5
    images = [texture(k, 100 * i + j) for i, k in enumerate(TEXTURES) for j in range(per)]
    labels = np.repeat(np.arange(len(TEXTURES)), per)
    with torch.no_grad():
        f = descriptor.encode(_to_tensor(images)).numpy()
    assert f.shape == (len(images), descriptor.dim)
    np.testing.assert_allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-5)
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    assert (labels[sim.argmax(axis=1)] == labels).all(), "nearest neighbour must be the same texture"
    np.fill_diagonal(sim, np.nan)
    for c in range(len(TEXTURES)):
        same = sim[np.ix_(labels == c, labels == c)]
        other = sim[np.ix_(labels == c, labels != c)]
        assert np.nanmin(same) > np.nanmax(other), f"{TEXTURES[c]}: some other texture is closer than its own"


def test_frozen_but_differentiable_wrt_input(descriptor: HEDescriptor) -> None:
    x = _to_tensor([texture("tumour", 1), texture("stroma", 2)]).requires_grad_(True)
    descriptor.train()  # a parent module switching to train mode must not unfreeze it
    assert not descriptor.training
    assert all(not p.requires_grad for p in descriptor.parameters())
    f = descriptor.encode(x)
    assert f.requires_grad
    (f[0] * f[1]).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_embedding_is_standardised_raw_features(descriptor: HEDescriptor) -> None:
    from protoseg.models.encoders.descriptor_constants import FEATURE_MEAN, FEATURE_STD
    from protoseg.models.encoders.he_features import he_features

    x = _to_tensor([texture("necrosis", 3)])
    with torch.no_grad():
        raw = he_features(x, stain_matrix_inverse())[0].double().numpy()
        enc = descriptor.encode(x)[0].numpy()
    z = (raw - np.array(FEATURE_MEAN)) / np.array(FEATURE_STD)
    np.testing.assert_allclose(enc, z / np.linalg.norm(z), atol=1e-5)
    assert 64 <= descriptor.dim <= 128


def test_rotation_by_90_degrees_barely_changes_embedding(descriptor: HEDescriptor) -> None:
    img = texture("stroma", 11)
    x = _to_tensor([img, np.ascontiguousarray(np.rot90(img))])
    with torch.no_grad():
        f = descriptor.encode(x)
    assert float(f[0] @ f[1]) > 0.99


def test_optical_density_and_colour_deconvolution_values() -> None:
    x = torch.tensor([1.0, 0.0, 127 / 255]).view(1, 3, 1, 1)
    od = optical_density(x).flatten()
    np.testing.assert_allclose(od.numpy(), [0.0, math.log(256.0), math.log(256.0 / 128.0)], atol=1e-6)
    m = np.asarray(RUIFROK_HED) / np.linalg.norm(RUIFROK_HED, axis=1, keepdims=True)
    conc = np.array([0.7, 0.3, 0.0])  # a pixel made of 0.7 haematoxylin + 0.3 eosin
    od_pix = torch.tensor(conc @ m, dtype=torch.float32).view(1, 3, 1, 1)
    from protoseg.models.encoders.he_features import stains

    np.testing.assert_allclose(stains(od_pix, stain_matrix_inverse()).flatten().numpy(), conc, atol=1e-5)


def test_soft_histogram_matches_gaussian_memberships() -> None:
    centres = (0.0, 0.5, 1.0)
    v = torch.tensor([[[0.0, 0.5], [0.5, 0.8]]])
    h = soft_histogram(v, centres)[0].numpy()
    w = 0.5 * 0.6
    ref = np.zeros(3)
    for val in (0.0, 0.5, 0.5, 0.8):
        e = np.exp(-((val - np.array(centres)) ** 2) / (2 * w**2))
        ref += e / e.sum() / 4
    np.testing.assert_allclose(h, ref, atol=1e-6)
    assert h.sum() == pytest.approx(1.0)


def test_input_validation_and_spec(descriptor: HEDescriptor) -> None:
    with pytest.raises(EncoderInputError, match="divide uint8"):
        descriptor.encode(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(EncoderInputError, match="above 1.5"):
        descriptor.encode(torch.full((1, 3, 64, 64), 200.0))
    with pytest.raises(EncoderInputError, match=r"\(N, 3, H, W\)"):
        descriptor.encode(torch.zeros(3, 64, 64))
    with pytest.raises(EncoderInputError, match="at least 64"):
        HEDescriptor(input_size=32)
    default = build_encoder(EncoderSpec())
    assert isinstance(default, HEDescriptor) and default.encoder_id == "he-descriptor-v1" and default.input_size == 224
    assert build_encoder(EncoderSpec(kind="descriptor", input_size=SIZE)).encoder_id == "he-descriptor-v1@128px"
    assert EncoderSpec(kind="timm", model_name="resnet18").kind is EncoderKind.TIMM


def test_other_sizes_are_resized_to_input_size(descriptor: HEDescriptor) -> None:
    img = texture("lymphocytes", 5)
    big = np.kron(img, np.ones((2, 2, 1), np.uint8))  # same content at twice the pixel count
    with torch.no_grad():
        f = descriptor.encode(
            torch.cat(
                [
                    _to_tensor([img]),
                    torch.nn.functional.interpolate(
                        _to_tensor([big]), size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False
                    ),
                ]
            )
        )
        g = descriptor.encode(_to_tensor([big]))
    np.testing.assert_allclose(g[0].numpy(), f[1].numpy(), atol=1e-5)
    assert float(f[0] @ g[0]) > 0.95


def test_weighted_region_describes_its_own_texture(descriptor: HEDescriptor) -> None:
    """Half of a two-texture image, given as weights, is nearest its own texture's pure patches for every pair;
    the black-filled half (PBIP's X_FG) is further from its texture than the weighted one."""
    pure = {k: descriptor.encode(_to_tensor([texture(k, 500 + j) for j in range(3)])).mean(0) for k in TEXTURES}
    tiles = {k: _to_tensor([texture(k, 8)])[0] for k in TEXTURES}
    half = torch.zeros(1, SIZE, SIZE)
    half[..., : SIZE // 2] = 1.0
    images, weights, owns = [], [], []
    for a, b in itertools.combinations(TEXTURES, 2):  # each half of each pair is tested
        x = tiles[b].clone()
        x[..., : SIZE // 2] = tiles[a][..., : SIZE // 2]
        for region, own in ((half, a), (1 - half, b)):
            images.append(x)
            weights.append(region)
            owns.append(own)
    x, w = torch.stack(images), torch.stack(weights)
    with torch.no_grad():
        feats, filled = descriptor.encode_weighted(x, w), descriptor.encode(x * w)
    protos = torch.stack([pure[k] for k in TEXTURES])
    for f, g, own in zip(feats, filled, owns):
        sims = dict(zip(TEXTURES, (protos @ f).tolist()))
        assert max(sims, key=sims.get) == own, (own, sims)
        assert sims[own] > float(g @ pure[own]), own


def test_weights_of_one_equal_the_plain_descriptor_and_are_differentiable(descriptor: HEDescriptor) -> None:
    x = _to_tensor([texture("stroma", 3), texture("tumour", 4)])
    with torch.no_grad():
        assert torch.equal(descriptor.encode_weighted(x, torch.ones(2, 1, SIZE, SIZE)), descriptor.encode(x))
    w = torch.rand(2, 1, SIZE // 2, SIZE // 2, requires_grad=True)  # resized to the encoder's input size
    descriptor.encode_weighted(x, w).sum().backward()
    assert w.grad is not None and float(w.grad.abs().sum()) > 0
    empty = torch.zeros(2, 1, SIZE, SIZE, requires_grad=True)  # a region with no pixel (e.g. b all False)
    descriptor.encode_weighted(x, empty).sum().backward()
    assert empty.grad is not None and bool(torch.isfinite(empty.grad).all())
    with pytest.raises(EncoderInputError, match="region weights"):
        descriptor.encode_weighted(x, torch.ones(2, 3, SIZE, SIZE))


def test_default_weighted_embedding_is_the_masked_image() -> None:
    """Encoders without weighted statistics (CLIP, timm) see exactly PBIP's masked image X * w."""
    from protoseg.models.encoders import ImageEncoder

    class Mean(ImageEncoder):
        encoder_id, dim, input_size = "mean", 3, 8

        def embed(self, images: torch.Tensor) -> torch.Tensor:
            return images.mean(dim=(2, 3)) + 0.1

    enc, x = Mean(), torch.rand(2, 3, 16, 16)  # resized to 8: masked first, as PBIP's X_FG
    w = (torch.rand(2, 1, 16, 16) > 0.5).float()
    assert torch.equal(enc.encode_weighted(x, w), enc.encode(x * w))
    assert not enc.weighted_statistics and HEDescriptor.weighted_statistics
