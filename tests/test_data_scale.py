"""Patch folders at another resolution (issue 24, ``data.scale``): images and masks resampled before the model sees
them, the model's µm/px follows, and a checkpoint is evaluated and given pseudo-masks at the scale it was trained
at; stage 2 and resumes refuse a mismatch in one line; slide regions are read at run.mpp instead."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.cli import main
from protoseg.config import ConfigError, load_config
from protoseg.data.datasets import open_dataset
from protoseg.data.errors import RegionError
from protoseg.data.records import Split
from protoseg.infer.predictor import Predictor
from protoseg.models.checkpoint import load_checkpoint
from protoseg.train.baselines import split_baselines
from protoseg.train.pipeline import (
    evaluate_checkpoint,
    folder_data,
    make_pseudo_masks,
    region_data,
    train_stage1,
    train_stage2,
)
from protoseg.train.pseudo import PseudoMaskError, export_pseudo_masks
from tiny_models import TINY_CPU_RUN


def _patch(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Purple left / pink right, mask TE left / TAS right (a thin NOR strip on the left edge)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[:, : size // 2] = (120, 60, 150)
    img[:, size // 2 :] = (230, 150, 190)
    img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2 :] = 1
    mask[:, :1] = 2
    return img, mask


def _folder(root: Path, size: int = 64, n: int = 6) -> Path:
    """Generic layout: train/ labels.csv (names carry MPP-0.5000), val/ and test/ img + mask."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [TE, TAS, NOR]\n")
    rows = ["path,TE,TAS,NOR"]
    for i in range(n):
        img, _ = _patch(rng, size)
        Image.fromarray(img).save(root / "train" / f"p{i}_MPP-0.5000.png")
        rows.append(f"p{i}_MPP-0.5000.png,1,1,0")
    (root / "train" / "labels.csv").write_text("\n".join(rows) + "\n")
    for split in ("val", "test"):
        for kind in ("img", "mask"):
            (root / split / kind).mkdir(parents=True)
        for i in range(2):
            img, mask = _patch(rng, size)
            Image.fromarray(img).save(root / split / "img" / f"v{i}.png")
            Image.fromarray(mask).save(root / split / "mask" / f"v{i}.png")
    return root


def _cfg(root: Path, out: Path, scale: float, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            f"data.scale={scale}",
            "data.batch_size=2",
            *TINY_CPU_RUN,
            "stage1.epochs=1",
            "stage2.epochs=1",
            f"run.out_dir={out}",
            *extra,
        ],
    )


def test_images_and_masks_are_resampled_and_labels_follow(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d", size=64)
    native = open_dataset(root, Split.VAL)
    half = open_dataset(root, Split.VAL, scale=0.5)
    a, b = native[0], half[0]
    assert tuple(a["image"].shape) == (3, 64, 64) and tuple(b["image"].shape) == (3, 32, 32)
    assert tuple(b["mask"].shape) == (32, 32)
    assert set(np.unique(b["mask"].numpy())) <= {0, 1, 2}  # nearest: class indices never blend
    assert np.array_equal(b["mask"].numpy(), a["mask"].numpy()[1::2, 1::2])  # the pixel under each centre
    assert np.allclose(b["image"].numpy(), a["image"].numpy().reshape(3, 32, 2, 32, 2).mean((2, 4)), atol=1 / 255)
    assert np.array_equal(half.image(0), (b["image"].numpy().transpose(1, 2, 0) * 255).round().astype(np.uint8))
    # the 1-px NOR strip (1.6 % of the patch) is gone at half resolution: labels are those of what is scored
    assert native.label(0).tolist() == [1, 1, 1] and half.label(0).tolist() == [1, 1, 0]


def test_model_mpp_is_the_files_divided_by_the_scale(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    assert folder_data(_cfg(root, tmp_path / "o", 1.0)).mpp == pytest.approx(0.5)
    assert folder_data(_cfg(root, tmp_path / "o", 0.5)).mpp == pytest.approx(1.0)


def test_a_checkpoint_is_used_at_the_scale_it_was_trained_at(tmp_path: Path, caplog, capsys) -> None:
    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    train_stage1(_cfg(root, out, 0.5))
    ckpt_path = out / "stage1" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    assert ckpt.data_scale == 0.5 and ckpt.mpp == pytest.approx(1.0)

    native_cfg = _cfg(root, out, 1.0)  # a user evaluating without repeating --set data.scale
    with caplog.at_level(logging.INFO, logger="protoseg.train.pipeline"):
        m = evaluate_checkpoint(native_cfg, ckpt_path, Split.TEST, use_labels=True, protocol="tissue")
    assert any("data.scale this checkpoint was trained at" in r.getMessage() for r in caplog.records)
    assert m == evaluate_checkpoint(
        _cfg(root, out, 0.5), ckpt_path, Split.TEST, use_labels=True, protocol="tissue"
    )  # the same numbers as at the training scale

    pseudo = make_pseudo_masks(native_cfg, ckpt_path)
    mask = np.asarray(Image.open(pseudo / "mask" / "p0_MPP-0.5000.png"))
    assert mask.shape == (32, 32)  # at the resolution the model saw
    with pytest.raises(PseudoMaskError, match=r"resampled by 0.5 \(data.scale\) but these are resampled by 1"):
        export_pseudo_masks(ckpt, open_dataset(root, Split.TRAIN), tmp_path / "p1", native_cfg)  # data given as is

    # protoseg eval: JSON says the scale, and the trivial baselines are scored on the same resampled masks
    cli = ["eval", "--checkpoint", str(ckpt_path), "--data", str(root), "--protocol", "tissue", "--json"]
    cli += ["--set", "model.weights=null", "--set", "run.device=cpu", "--set", "data.num_workers=0"]
    assert main(cli) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert report["data_scale"] == 0.5
    assert report["baselines"] == json.loads(json.dumps(split_baselines(root, "test", None, "tissue", scale=0.5)))
    assert report["baselines"] != json.loads(json.dumps(split_baselines(root, "test", None, "tissue")))

    with caplog.at_level(logging.WARNING, logger="protoseg.infer.predictor"):
        Predictor(ckpt.with_updates(mpp=None), device="cpu")  # no µm/px: slides would be read at full resolution
    assert any("resampled by 0.5 (data.scale) and records no µm/px" in r.getMessage() for r in caplog.records)

    with pytest.raises(PseudoMaskError, match=r"resampled by 0.5 \(data.scale\).*--set data.scale=0.5") as err:
        train_stage2(native_cfg, pseudo, stage1=ckpt_path)
    assert "\n" not in str(err.value)
    result = train_stage2(_cfg(root, out, 0.5), pseudo, stage1=ckpt_path)
    stage2 = load_checkpoint(result.last)
    assert stage2.data_scale == 0.5 and stage2.mpp == pytest.approx(1.0)


def test_resume_at_another_scale_is_refused(tmp_path: Path) -> None:
    from protoseg.train.errors import TrainingError

    root, out = _folder(tmp_path / "d", n=4), tmp_path / "run"
    train_stage1(_cfg(root, out, 0.5))
    with pytest.raises(TrainingError, match=r"data.scale 0.5 vs 1"):
        train_stage1(_cfg(root, out, 1.0, "stage1.epochs=2"), resume=True)


def test_regions_and_out_of_range_values_are_refused(tmp_path: Path) -> None:
    from protoseg.classes import ClassSpec

    with pytest.raises(RegionError, match="data.scale=0.5 resamples patch folders.*run.mpp"):
        region_data(_cfg(tmp_path, tmp_path / "o", 0.5), [], ClassSpec(names=("A", "B")), 0.5)
    for bad in ("0", "-1", "nan", "10"):
        with pytest.raises(ConfigError, match="data.scale"):
            _cfg(tmp_path, tmp_path / "o", bad)  # type: ignore[arg-type]


def test_masks_must_match_their_image_at_full_resolution(tmp_path: Path) -> None:
    """A 225-px image with a 224-px mask is refused at any scale (both round to 112 at 0.5)."""
    from protoseg.data.errors import DatasetLayoutError

    root = _folder(tmp_path / "d", size=64)
    Image.fromarray(np.zeros((64, 65, 3), np.uint8)).save(root / "val" / "img" / "v0.png")
    for scale in (1.0, 0.5):
        with pytest.raises(DatasetLayoutError, match="v0.png is 64x64, a different size from image"):
            open_dataset(root, Split.VAL, scale=scale)[0]


def test_fixed_size_backbones_are_built_for_the_resampled_size_and_refuse_pseudo_scales(tmp_path: Path) -> None:
    from protoseg.config import fixed_input_size

    cfg = _cfg(tmp_path, tmp_path / "o", 0.5, "data.patch_size=224")
    assert fixed_input_size(cfg, "swin_tiny_patch4_window7_224") == 112 and fixed_input_size(cfg, "resnet18") is None
    with pytest.raises(ConfigError, match=r"stage1.pseudo.scales=\[1.0, 2.0\] needs a backbone that takes any"):
        _cfg(tmp_path, tmp_path / "o", 1.0, "model.backbone=vit_small_patch16_224", "stage1.pseudo.scales=[1.0, 2.0]")
