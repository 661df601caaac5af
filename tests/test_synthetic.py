"""Synthetic H&E generator: determinism, labels vs masks, layouts, hardness, pyramidal slide."""

from __future__ import annotations

import hashlib
import re

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

from protoseg.classes import BCSS_WSSS
from protoseg.data import Layout, detect_layout, labels_from_mask, load_mask, open_dataset
from protoseg.data.augment import rgb_to_hed
from protoseg.data.synthetic import random_layout, render_tissue, synthetic_patch, write_bcss_dataset


def _digest(root):
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*.png"))
    }


def test_same_seed_same_bytes_and_labels_match_masks(tmp_path):
    a = write_bcss_dataset(tmp_path / "a", n_train=6, n_val=2, n_test=2, size=64, seed=3)
    b = write_bcss_dataset(tmp_path / "b", n_train=6, n_val=2, n_test=2, size=64, seed=3)
    c = write_bcss_dataset(tmp_path / "c", n_train=6, n_val=2, n_test=2, size=64, seed=4)
    da, db, dc = _digest(a), _digest(b), _digest(c)
    assert len(da) == 6 + 2 * 2 * 2 and da == db
    assert sum(da[k] != dc.get(k) for k in da) >= 6
    assert detect_layout(a) is Layout.BCSS_WSSS
    train = open_dataset(a, "train")
    for rec in train.records:
        assert re.fullmatch(r"synth_\d{6}_MPP-0\.5000\+0\[[01]{4}\]", rec.name)
        _, label_map = synthetic_patch(3, "train", int(rec.name[6:12]), 64)
        assert rec.label == tuple(int(v) for v in labels_from_mask(label_map, 4))
        assert sum(rec.label) >= 1
    val = open_dataset(a, "val")
    for i, rec in enumerate(val.records):
        im = Image.open(rec.mask)
        assert im.mode == "P" and im.getpalette()[:15] == [v for c in BCSS_WSSS.palette() for v in c]
        _, label_map = synthetic_patch(3, "val", i, 64)
        np.testing.assert_array_equal(load_mask(rec.mask, BCSS_WSSS), label_map)
        np.testing.assert_array_equal(val[i]["label"].numpy(), labels_from_mask(label_map, 4))


def test_random_layout_class_counts_and_background():
    for s in range(12):
        rng = np.random.default_rng(s)
        lab = random_layout(64, rng, n_classes_range=(2, 3), background_prob=0.0, min_fraction=0.05)
        classes, counts = np.unique(lab, return_counts=True)
        assert 2 <= len(classes) <= 3 and classes.max() < 4
        assert counts.min() >= 0.05 * lab.size
        lab = random_layout((48, 80), rng, n_classes_range=(1, 1), background_prob=1.0)
        assert lab.shape == (48, 80)
        vals = set(np.unique(lab).tolist())
        assert 4 in vals and len(vals - {4}) == 1
        assert 0.05 < (lab == 4).mean() < 0.45
    with pytest.raises(ValueError, match="n_classes_range"):
        random_layout(8, np.random.default_rng(0), n_classes_range=(0, 5))


def test_render_glass_is_bright_and_tissue_is_stained():
    lab = np.full((64, 96), 4)
    lab[:, :48] = 0
    rgb = render_tissue(lab, np.random.default_rng(0))
    assert rgb.dtype == np.uint8 and rgb.shape == (64, 96, 3)
    glass, tissue = rgb[:, 64:].reshape(-1, 3).astype(float), rgb[:, :32].reshape(-1, 3).astype(float)
    assert glass.mean() > 215 and glass.std(axis=0).max() < 8
    assert tissue.mean() < glass.mean() - 40
    a = render_tissue(lab, np.random.default_rng(7))
    assert np.array_equal(a, render_tissue(lab, np.random.default_rng(7)))


def _texture_features(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin-channel blob and orientation statistics (nuclear size, density, coherence)."""
    h = rgb_to_hed(torch.from_numpy(rgb).permute(2, 0, 1).double() / 255)[0].numpy()
    blobs = h > 0.5 * np.quantile(h, 0.99)
    lab, n = ndimage.label(blobs)
    sizes = np.bincount(lab.ravel())[1:] if n else np.zeros(1)
    gy, gx = np.gradient(ndimage.gaussian_filter(h, 1.0))
    jxx, jyy, jxy = (gx * gx).mean(), (gy * gy).mean(), (gx * gy).mean()
    coherence = np.sqrt((jxx - jyy) ** 2 + 4 * jxy**2) / (jxx + jyy + 1e-9)
    return np.array(
        [
            blobs.mean(),
            n / h.size * 1000,
            np.log1p(np.median(sizes)),
            np.log1p(sizes.mean()),
            coherence,
            h.std() / (h.mean() + 1e-3),
        ]
    )


def _nearest_centroid_accuracy(x: np.ndarray, y: np.ndarray) -> float:
    x = (x - x.mean(0)) / (x.std(0) + 1e-9)
    train = np.arange(len(y)) % 2 == 0
    cents = np.stack([x[train & (y == c)].mean(0) for c in range(4)])
    pred = np.argmin(((x[~train][:, None] - cents[None]) ** 2).sum(-1), axis=1)
    return float((pred == y[~train]).mean())


def test_classes_not_separable_by_mean_colour_but_by_texture():
    colour, texture, y = [], [], []
    for c in range(4):
        for i in range(12):
            rgb = render_tissue(np.full((96, 96), c), np.random.default_rng([11, c, i]))
            colour.append(rgb.reshape(-1, 3).mean(0))
            texture.append(_texture_features(rgb))
            y.append(c)
    y = np.array(y)
    acc_colour = _nearest_centroid_accuracy(np.array(colour), y)
    acc_texture = _nearest_centroid_accuracy(np.array(texture), y)
    assert acc_colour < 0.8
    assert acc_texture > acc_colour + 0.1


def test_write_synthetic_slide_opens_as_pyramid(tmp_path):
    pytest.importorskip("protoseg.slide.writer")
    from protoseg.data.synthetic import mask_path_for, write_synthetic_slide
    from protoseg.slide import open_slide

    s = write_synthetic_slide(tmp_path / "syn.ome.tif", size=(512, 384), mpp=0.5, seed=1, tile_size=128)
    assert s.mask_path == tmp_path / "syn_mask.png" == mask_path_for(s.path)
    slide = open_slide(s.path)
    try:
        assert slide.mpp == pytest.approx(0.5)
        assert tuple(slide.dimensions) == (512, 384) and slide.level_count >= 2
        pixels = np.asarray(slide.read((0, 0, 512, 384), 0.5))
    finally:
        slide.close()
    mask = load_mask(s.mask_path, BCSS_WSSS)
    assert Image.open(s.mask_path).mode == "P" and mask.shape == (384, 512)
    assert set(np.unique(mask).tolist()) == {0, 1, 2, 3, 4}
    # JPEG-compressed pixels: glass bright, tissue darker, as in the ground truth
    grey = pixels.astype(float).mean(-1)
    assert grey[mask == 4].mean() > 210 and grey[mask < 4].mean() < grey[mask == 4].mean() - 40
