"""Augmentations keep image and mask aligned, are seeded, HED maths matches scikit-image, and batched stain
jitter (the trainer's, on the device) draws what per-image jitter draws."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.data import ColorJitter, Compose, HEDJitter, RandomFlip, RandomRot90
from protoseg.data.augment import default_augmentation, hed_to_rgb, rgb_to_hed


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


def _tissue(n: int, seed: int, size: int = 6) -> torch.Tensor:
    """``n`` small H&E-coloured patches (four base colours plus pixel noise) in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    bases = torch.tensor([[0.78, 0.24, 0.35], [0.9, 0.59, 0.75], [0.24, 0.16, 0.59], [0.95, 0.9, 0.93]])
    noise = 0.04 * torch.randn(n, 3, size, size, generator=g)
    return (bases[torch.arange(n) % 4].view(n, 3, 1, 1) + noise).clamp(0.02, 1.0)


def test_batched_stain_jitter_is_per_image_jitter_from_the_same_generator():
    images = _tissue(10, seed=0)
    jit = HEDJitter(0.1, 0.08)
    g = torch.Generator().manual_seed(7)
    one_by_one = torch.stack([jit({"image": im}, g)["image"] for im in images])
    batched = jit.apply_batch(images, torch.Generator().manual_seed(7))
    torch.testing.assert_close(batched, one_by_one, atol=1e-6, rtol=0)
    g = torch.Generator().manual_seed(7)  # reference: HED channels scaled and shifted, image by image
    ref = []
    for im in images.double():
        scale = 0.9 + 0.2 * torch.rand(3, generator=g, dtype=torch.float64)
        shift = -0.08 + 0.16 * torch.rand(3, generator=g, dtype=torch.float64)
        ref.append(hed_to_rgb(rgb_to_hed(im) * scale.view(3, 1, 1) + shift.view(3, 1, 1)))
    torch.testing.assert_close(batched, torch.stack(ref).float(), atol=2e-6, rtol=0)
    torch.testing.assert_close(jit.apply_batch(images.double(), torch.Generator().manual_seed(7)), torch.stack(ref))
    assert (batched - images).abs().amax(dim=(1, 2, 3)).min() > 1e-3  # every image jittered
    again = jit.apply_batch(images, torch.Generator().manual_seed(8))
    assert not torch.allclose(again, batched, atol=1e-4)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov statistic (largest gap between the empirical CDFs)."""
    grid = np.sort(np.concatenate([a, b]))
    cdf_a = np.searchsorted(np.sort(a), grid, side="right") / len(a)
    cdf_b = np.searchsorted(np.sort(b), grid, side="right") / len(b)
    return float(np.abs(cdf_a - cdf_b).max())


def test_batched_and_per_image_stain_jitter_have_the_same_statistics():
    n = 480
    images = _tissue(n, seed=1)
    per_image = Compose([HEDJitter()], seed=11)  # the dataset path: one image at a time
    a = torch.stack([per_image({"image": im})["image"] for im in images])
    g = torch.Generator().manual_seed(12)  # another stream: same distribution, other draws
    b = torch.cat([HEDJitter().apply_batch(chunk, g) for chunk in images.split(16)])
    assert not torch.allclose(a, b, atol=1e-3)
    da, db = (x - images for x in (a, b))  # the jitter's effect per pixel
    for c in range(3):
        ma, mb = da[:, c].mean(dim=(1, 2)).numpy(), db[:, c].mean(dim=(1, 2)).numpy()
        assert _ks(ma, mb) < 0.11  # 5% critical value at n = m = 480 is 0.088; 0.1% is 0.126
        assert abs(ma.mean() - mb.mean()) < 0.15 * ma.std()
        assert 0.85 < mb.std() / ma.std() < 1.15
        assert ma.std() > 5e-3  # the jitter does something measurable
    # a different strength is told apart by the same statistic (the comparison has power)
    c = torch.cat([HEDJitter(0.15, 0.15).apply_batch(chunk, g) for chunk in images.split(16)]) - images
    assert _ks(da[:, 0].mean(dim=(1, 2)).numpy(), c[:, 0].mean(dim=(1, 2)).numpy()) > 0.15


def test_default_augmentation_without_stain_leaves_it_to_the_device():
    full, light = default_augmentation(seed=3), default_augmentation(seed=3, with_stain=False)
    assert [type(t) for t in full.transforms] == [RandomFlip, RandomRot90, ColorJitter, HEDJitter]
    assert [type(t) for t in light.transforms] == [RandomFlip, RandomRot90, ColorJitter]
    base, _, _ = _coord_sample()
    torch.testing.assert_close(light(base)["image"], default_augmentation(seed=3, with_stain=False)(base)["image"])
