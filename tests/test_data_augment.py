"""Augmentations keep image and mask aligned, are seeded, and HED maths matches scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.data import ColorJitter, Compose, HEDJitter, RandomFlip, RandomRot90
from protoseg.data.augment import hed_to_rgb, rgb_to_hed


def _coord_sample(h=5, w=7):
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([rows / (h - 1), cols / (w - 1), torch.full((h, w), 0.5)]).float()
    return {"image": image, "mask": rows * w + cols, "label": torch.tensor([1.0]), "name": "x"}, h, w


def test_geometric_augmentations_keep_mask_aligned():
    aug = Compose([RandomFlip(p=0.5), RandomRot90()], seed=0)
    base, h, w = _coord_sample()
    shapes, masks = set(), set()
    for _ in range(40):
        out = aug(base)
        img, mask = out["image"], out["mask"]
        assert img.shape[1:] == mask.shape
        decoded = (img[0] * (h - 1)).round().long() * w + (img[1] * (w - 1)).round().long()
        assert torch.equal(decoded, mask)
        shapes.add(tuple(mask.shape))
        masks.add(tuple(mask.flatten().tolist()))
        assert out["label"] is base["label"] and out["name"] == "x"
    assert shapes == {(5, 7), (7, 5)} and len(masks) == 8  # all 8 dihedral transforms seen
    assert torch.equal(base["mask"], _coord_sample()[0]["mask"])  # input untouched


def test_seeded_compose_is_reproducible():
    base, _, _ = _coord_sample()
    pipe = [RandomFlip(), RandomRot90(), ColorJitter(0.2, 0.2, 0.2), HEDJitter(0.1, 0.1)]
    a = [Compose(pipe, seed=5)(base)["image"] for _ in range(1)]
    b = [Compose(pipe, seed=5)(base)["image"] for _ in range(1)]
    assert torch.equal(a[0], b[0])
    c = Compose(pipe, seed=6)(base)["image"]
    assert not torch.equal(a[0], c)


def test_color_jitter_brightness_matches_reference():
    img = torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8
    g = torch.Generator().manual_seed(1)
    out = ColorJitter(brightness=0.3, contrast=0.0, saturation=0.0)({"image": img}, g)["image"]
    g = torch.Generator().manual_seed(1)
    factor = 0.7 + 0.6 * torch.rand(1, generator=g, dtype=torch.float64).item()
    torch.testing.assert_close(out, (img * factor).clamp(0, 1))
    same = ColorJitter(0, 0, 0)({"image": img})["image"]
    torch.testing.assert_close(same, img)


def test_hed_matches_skimage_up_to_channel_scale_and_roundtrips():
    skcolor = pytest.importorskip("skimage.color")
    rgb = np.random.default_rng(0).uniform(0.05, 1.0, (6, 5, 3))
    ours = rgb_to_hed(torch.from_numpy(rgb).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    ref = skcolor.rgb2hed(rgb)
    # skimage: max(-ln(rgb)/ln(1e6) @ inv(M), 0) with M un-normalised; ours: -log10(rgb) @ inv(M / row norms)
    norms = np.linalg.norm(np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]), axis=1)
    positive = ref > 0
    assert positive.mean() > 0.3
    np.testing.assert_allclose(ours[positive], (ref * 6.0 * norms)[positive], rtol=1e-6, atol=1e-9)
    assert np.all(ours[~positive] <= 1e-9)
    back = hed_to_rgb(torch.from_numpy(ours).permute(2, 0, 1)).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(back, rgb, atol=1e-9)
    img = torch.from_numpy(rgb).permute(2, 0, 1).float()
    torch.testing.assert_close(HEDJitter(0, 0)({"image": img})["image"], img, atol=1e-5, rtol=0)
    g = torch.Generator().manual_seed(0)
    out = HEDJitter(alpha=0.0, beta=0.2)({"image": img}, g)["image"]
    g = torch.Generator().manual_seed(0)
    torch.rand(3, generator=g, dtype=torch.float64)  # scales (all 1 when alpha = 0)
    shift = (-0.2 + 0.4 * torch.rand(3, generator=g, dtype=torch.float64)).numpy()
    stains = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]]) / norms[:, None]
    expected = np.clip(10 ** -((ours + shift) @ stains), 0, 1)
    np.testing.assert_allclose(out.permute(1, 2, 0).numpy(), expected, atol=1e-5)
