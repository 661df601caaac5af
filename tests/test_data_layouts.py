"""Dataset layout parsing (BCSS-WSSS, LUAD-HistoSeg, generic), masks and layout errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.classes import BCSS_WSSS, LUAD_HISTOSEG
from protoseg.data import (
    DatasetLayoutError,
    Layout,
    Split,
    detect_layout,
    load_mask,
    open_dataset,
    save_palette_mask,
)


def _img(path, seed=0, size=(8, 6)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return rgb


def _bcss_tree(root, val_name="val"):
    _img(root / "train" / "TCGA-A1_xmin1_ymin2_MPP-0.2500+0[1101].png", 1)
    _img(root / "train" / "TCGA-A2_xmin3_ymin4_MPP-0.2500+0[0010].png", 2)
    mask = np.full((6, 8), 4, np.uint8)
    mask[:3, :4] = 0
    mask[3:, 4:] = 3
    mask[0, 7] = 255
    for split in (val_name, "test"):
        _img(root / split / "img" / "p1.png", 3)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
        save_palette_mask(root / split / "mask" / "p1.png", mask, BCSS_WSSS)
    return mask


def test_bcss_layout_train_val_test(tmp_path):
    mask = _bcss_tree(tmp_path, val_name="valid")
    assert detect_layout(tmp_path) is Layout.BCSS_WSSS
    train = open_dataset(tmp_path, "train")
    assert len(train) == 2 and train.classes == BCSS_WSSS
    labels = {train[i]["name"]: train[i]["label"].tolist() for i in range(2)}
    assert labels["TCGA-A1_xmin1_ymin2_MPP-0.2500+0[1101]"] == [1, 1, 0, 1]
    assert labels["TCGA-A2_xmin3_ymin4_MPP-0.2500+0[0010]"] == [0, 0, 1, 0]
    assert train.records[0].mpp == 0.25
    s = train[0]
    assert s["image"].dtype == torch.float32 and s["image"].shape == (3, 6, 8) and "mask" not in s
    raw = np.array(Image.open(train.records[0].image).convert("RGB"))
    assert torch.allclose(s["image"], torch.from_numpy(raw).permute(2, 0, 1).float() / 255)
    for split in (Split.VAL, Split.TEST):
        ds = open_dataset(tmp_path, split)
        s = ds[0]
        assert s["mask"].dtype == torch.int64 and np.array_equal(s["mask"].numpy(), mask)
        assert s["label"].tolist() == [1, 0, 0, 1]  # TUM and NEC present; background/ignore are not labels
        np.testing.assert_array_equal(ds.labels(), [[1, 0, 0, 1]])


def test_luad_layout_with_rgb_masks(tmp_path):
    _img(tmp_path / "train" / "1031280-2300-27920-[1 0 0 1].png")
    _img(tmp_path / "train" / "1031281-2300-27920-[0 1 1 0].png")
    idx = np.array([[0, 1, 2, 3], [4, 4, 2, 0]])
    colours = np.array([*LUAD_HISTOSEG.colors, LUAD_HISTOSEG.background_color], np.uint8)
    for split in ("val", "test"):
        _img(tmp_path / split / "img" / "a.png", size=(4, 2))
        (tmp_path / split / "mask").mkdir(parents=True)
        Image.fromarray(colours[idx]).save(tmp_path / split / "mask" / "a.png")
    assert detect_layout(tmp_path) is Layout.LUAD_HISTOSEG
    train = open_dataset(tmp_path, Split.TRAIN)
    assert train.classes == LUAD_HISTOSEG
    assert [r.label for r in train.records] == [(1, 0, 0, 1), (0, 1, 1, 0)]
    val = open_dataset(tmp_path, "val")
    assert np.array_equal(val[0]["mask"].numpy(), idx)
    assert val[0]["label"].tolist() == [1, 1, 1, 1]


def test_detect_layout_from_mask_palette_without_train(tmp_path):
    mask = np.array([[0, 1], [2, 4]], np.uint8)
    _img(tmp_path / "test" / "img" / "x.png", size=(2, 2))
    (tmp_path / "test" / "mask").mkdir(parents=True)
    save_palette_mask(tmp_path / "test" / "mask" / "x.png", mask, LUAD_HISTOSEG)
    assert detect_layout(tmp_path) is Layout.LUAD_HISTOSEG


def test_rgb_mask_unknown_colour_is_layout_error(tmp_path):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[0, 0] = (255, 0, 0)
    rgb[1, 1] = (12, 34, 56)
    Image.fromarray(rgb).save(tmp_path / "m.png")
    with pytest.raises(DatasetLayoutError, match=r"\(12, 34, 56\).*not in the class palette"):
        load_mask(tmp_path / "m.png", BCSS_WSSS)
    rgb[1, 1] = (0, 0, 0)  # black = unlabelled -> ignore
    Image.fromarray(rgb).save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", BCSS_WSSS), [[0, 255], [255, 255]])


def test_layout_errors_say_what_was_expected(tmp_path):
    (tmp_path / "stuff").mkdir()
    with pytest.raises(DatasetLayoutError, match=r"cannot detect.*\[1101\].*stuff/"):
        detect_layout(tmp_path)
    with pytest.raises(DatasetLayoutError, match=r"expects a 'train/' folder.*\[1101\]"):
        open_dataset(tmp_path, "train", layout="bcss_wsss")
    _img(tmp_path / "train" / "no_label_here.png")
    with pytest.raises(DatasetLayoutError, match=r"no training image.*no_label_here"):
        open_dataset(tmp_path, "train", layout=Layout.BCSS_WSSS)
    _img(tmp_path / "val" / "img" / "a.png")
    _img(tmp_path / "val" / "mask" / "b.png")
    with pytest.raises(DatasetLayoutError, match=r"no mask of the same name.*a\.png.*b\.png"):
        open_dataset(tmp_path, "val", layout=Layout.BCSS_WSSS)
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        open_dataset(tmp_path / "missing")


def test_generic_csv_multi_hot_and_tags(tmp_path):
    (tmp_path / "classes.yaml").write_text("names: [A, B, C]\ncolors: [[1, 2, 3], [4, 5, 6], [7, 8, 9]]\n")
    for n in ("p0", "p1", "p2"):
        _img(tmp_path / "imgs" / f"{n}.png")
    (tmp_path / "labels.csv").write_text(
        "path,A,B,C,split\nimgs/p0.png,1,0,1,train\nimgs/p1.png,0,1,0,train\nimgs/p2.png,0,0,1,val\n"
    )
    assert detect_layout(tmp_path) is Layout.GENERIC
    ds = open_dataset(tmp_path, "train")
    assert ds.classes.names == ("A", "B", "C") and ds.classes.colors[1] == (4, 5, 6)
    np.testing.assert_array_equal(ds.labels(), [[1, 0, 1], [0, 1, 0]])
    assert open_dataset(tmp_path, "val")[0]["label"].tolist() == [0, 0, 1]
    (tmp_path / "labels.csv").write_text("path,tags\nimgs/p0.png,C;A\nimgs/p1.png,B\n")
    np.testing.assert_array_equal(open_dataset(tmp_path, "train").labels(), [[1, 0, 1], [0, 1, 0]])
    (tmp_path / "labels.csv").write_text("path,tags\nimgs/p0.png,Z\n")
    with pytest.raises(DatasetLayoutError, match=r"tags \['Z'\] are not classes"):
        open_dataset(tmp_path, "train")


def test_generic_class_folders_and_json_classes(tmp_path):
    _img(tmp_path / "STR" / "s1.png")
    _img(tmp_path / "TUM" / "t1.png")
    _img(tmp_path / "TUM" / "t2.png")
    assert detect_layout(tmp_path) is Layout.GENERIC
    ds = open_dataset(tmp_path)
    assert ds.classes.names == ("STR", "TUM")
    assert {r.name: r.label for r in ds.records} == {"STR/s1": (1, 0), "TUM/t1": (0, 1), "TUM/t2": (0, 1)}
    (tmp_path / "classes.json").write_text(
        json.dumps([{"name": "TUM", "color": [255, 0, 0]}, {"name": "STR", "color": [0, 255, 0]}])
    )
    ds = open_dataset(tmp_path)
    assert ds.classes.names == ("TUM", "STR")
    assert {r.name: r.label for r in ds.records}["STR/s1"] == (0, 1)


def test_mask_size_mismatch_is_reported(tmp_path):
    _bcss_tree(tmp_path)
    save_palette_mask(tmp_path / "val" / "mask" / "p1.png", np.zeros((3, 3), np.uint8), BCSS_WSSS)
    with pytest.raises(DatasetLayoutError, match="must match their image size"):
        open_dataset(tmp_path, "val")[0]


def test_palette_mask_roundtrip(tmp_path):
    m = np.array([[0, 1, 2], [3, 4, 255]])
    save_palette_mask(tmp_path / "m.png", m, BCSS_WSSS)
    im = Image.open(tmp_path / "m.png")
    assert im.mode == "P" and im.getpalette()[:15] == [255, 0, 0, 0, 255, 0, 0, 0, 255, 153, 0, 255, 255, 255, 255]
    np.testing.assert_array_equal(load_mask(tmp_path / "m.png", BCSS_WSSS), m)
