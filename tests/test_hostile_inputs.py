"""Hostile and careless inputs (issue 13): each case must end in a one-line ProtosegError (or a usage error)
that names the file or setting, never a traceback, a hang, a silently wrong result or lost data.

One section per area; add new cases to the section they belong to.
"""

from __future__ import annotations

import dataclasses
import json
import re
import sys
import typing
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset

from protoseg.classes import BCSS_WSSS, ClassSpec
from protoseg.cli import main
from protoseg.config import ConfigError, ProtosegConfig, load_config
from protoseg.config_ranges import RANGES

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
torch.set_num_threads(1)

BACKBONE = "test_convnext"  # timm's smallest four-stage model, random init
CLASSES = ClassSpec(names=("tumour", "stroma", "lymph"))


def _cfg(*overrides: str) -> ProtosegConfig:
    return load_config(
        None,
        [
            f"model.backbone={BACKBONE}",
            "model.weights=null",  # random init: offline
            "stage1.warm_start=none",
            "stage2.weights=null",
            "model.projector_hidden=16",
            "run.device=cpu",
            "run.amp=false",
            *overrides,
        ],
    )


# ==== config: numeric ranges (item 7) ==================================================================
@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("stage1.epochs=0", "stage1.epochs"),
        ("stage1.epochs=-3", "stage1.epochs"),
        ("stage2.epochs=0", "stage2.epochs"),
        ("data.patch_size=-64", "data.patch_size"),
        ("stage1.grad_clip=nan", "stage1.grad_clip"),  # would silently disable clipping
        ("stage2.grad_clip=.inf", "stage2.grad_clip"),
        ("stage1.lr=nan", "stage1.lr"),
        ("stage1.lr=-1", "stage1.lr"),
        ("stage2.lr=0", "stage2.lr"),
        ("data.batch_size=0", "data.batch_size"),
        ("data.num_workers=-1", "data.num_workers"),
        ("run.mpp=.inf", "run.mpp"),
        ("run.mpp=-0.5", "run.mpp"),
        ("stage1.fusion_weights=[0.3, .nan, 0.4]", "stage1.fusion_weights"),
        ("stage1.pseudo.ignore_below=1.5", "stage1.pseudo.ignore_below"),
        ("stage1.similarity.temperature=0", "stage1.similarity.temperature"),
        ("bank.k=0", "bank.k"),
    ],
)
def test_out_of_range_settings_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_config(None, [override])


def test_ranges_hold_for_yaml_files_and_replace(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("stage1:\n  grad_clip: .nan\n")
    with pytest.raises(ConfigError, match="stage1.grad_clip"):
        load_config(path)
    cfg = ProtosegConfig()
    with pytest.raises(ConfigError, match="data.batch_size"):
        dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, batch_size=0))
    assert load_config(None, ["stage1.grad_clip=0", "stage1.max_pairs=0"]).stage1.grad_clip == 0  # 0 = off / all


def _numeric_fields(cls: type, prefix: str = "") -> set[str]:
    """Dotted keys of every int/float (optionally None or a tuple) field of a config dataclass tree."""
    out: set[str] = set()
    hints = typing.get_type_hints(cls, localns={"Layout": Any, "EncoderKind": Any})
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out |= _numeric_fields(tp, f"{prefix}{f.name}.")
        elif re.search(r"\b(int|float)\b", str(tp)) or tp in (int, float):
            out.add(f"{prefix}{f.name}")
    return out


def test_every_numeric_setting_has_a_range() -> None:
    keys = _numeric_fields(ProtosegConfig)
    assert keys - set(RANGES) == set(), "add a RANGES entry (protoseg.config_ranges) for each new numeric setting"
    assert set(RANGES) - keys == set(), "RANGES names settings that no longer exist"


# ==== CLI arguments (item 7) ============================================================================
@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["train", "stage1", "--epochs", "0"], "--epochs"),
        (["train", "stage2", "--epochs", "-3"], "--epochs"),
        (["predict", "s.svs", "-c", "m.pt", "-o", "out", "--chunk", "8"], "--chunk"),
        (["predict", "s.svs", "-c", "m.pt", "-o", "out", "--slide-mpp", "inf"], "--slide-mpp"),
        (["predict", "s.svs", "-c", "m.pt", "-o", "out", "--slide-mpp", "0"], "--slide-mpp"),
        (["predict", "s.svs", "-c", "m.pt", "-o", "out", "--batch-size", "0"], "--batch-size"),
        (["bank", "build", "--out", "b", "--k", "0"], "--k"),
        (["synth", "dataset", "d", "--size", "4"], "--size"),
    ],
)
def test_cli_numbers_out_of_range_are_usage_errors(argv: list[str], flag: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and "Traceback" not in err


def test_cli_nan_setting_is_one_line_error_naming_the_key(capsys: Any) -> None:
    assert main(["train", "stage1", "--set", "stage1.grad_clip=nan"]) == 2
    err = capsys.readouterr().err
    assert "stage1.grad_clip" in err and "Traceback" not in err


# issue 22 item 8: every float option is finite and bounded (inf/1e308 collapsed every object, nan acted as 0)
@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--simplify", "inf"),
        ("--simplify", "1e308"),
        ("--simplify", "nan"),
        ("--simplify", "-1"),
        ("--min-area", "nan"),
        ("--min-area", "inf"),
        ("--min-area", "1e300"),
    ],
)
def test_export_float_options_are_range_checked(flag: str, value: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["export", "p.zarr", "-f", "geojson", flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: must be a finite number >= 0 and <= " in err and "Traceback" not in err


def test_export_library_refuses_non_finite_shape_options(tmp_path: Path) -> None:
    from protoseg.export import ExportError, export_prediction

    for kw, named in (({"simplify_um": float("nan")}, "simplify_um"), ({"min_area_um2": float("inf")}, "min_area_um2")):
        with pytest.raises(ExportError, match=f"{named} .*not a finite number"):
            export_prediction(tmp_path / "p.zarr", "geojson", **kw)


# ==== datasets: check before training (item 8) =========================================================
@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    from protoseg.data.synthetic.writers import write_bcss_dataset

    return write_bcss_dataset(tmp_path / "data", n_train=6, n_val=3, n_test=0, size=32, seed=1)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _damage(root: Path) -> dict[str, Path]:
    """A truncated train PNG, a train patch of another size, a val mask with an unknown index, a val mask of
    the wrong size."""
    train = sorted((root / "train").glob("*.png"))
    masks = sorted((root / "val" / "mask").glob("*.png"))
    _truncate(train[0])
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(train[1])
    with Image.open(masks[0]) as im:
        arr, palette = np.array(im), im.getpalette()
    arr[0, 0] = 9
    bad = Image.fromarray(arr.astype(np.uint8), "P")
    bad.putpalette(palette)
    bad.save(masks[0])
    with Image.open(masks[1]) as im:
        im.resize((16, 16)).save(masks[1])
    return {"truncated": train[0], "size": train[1], "values": masks[0], "mask_size": masks[1]}


def test_dataset_check_names_each_bad_file(dataset: Path) -> None:
    from protoseg.data.check import check_dataset

    good = check_dataset(dataset)
    assert good.ok and [s.patches for s in good.splits] == [6, 3]
    assert sum(n for _, n in good.splits[0].per_class) >= 6  # every patch has at least one class
    bad = _damage(dataset)
    report = check_dataset(dataset)
    assert not report.ok
    named = {Path(p.path): p.problem for p in report.all_problems}
    assert set(named) == set(bad.values())
    assert "Truncated" in named[bad["truncated"]] or "truncated" in named[bad["truncated"]]
    assert "40x40" in named[bad["size"]]
    assert "[9]" in named[bad["values"]]
    assert "16x16" in named[bad["mask_size"]]
    text = report.format()
    assert all(str(p) in text for p in bad.values()) and "FAILED: 4 problem(s)" in text


def test_data_check_verb_prints_the_report(dataset: Path, capsys: Any) -> None:
    assert main(["data", "check", str(dataset), "-q"]) == 0
    assert "OK: ready to train" in capsys.readouterr().out
    bad = _damage(dataset)
    assert main(["data", "check", str(dataset), "-q"]) == 1
    out = capsys.readouterr().out
    assert all(str(p) in out for p in bad.values())


def test_truncated_png_error_names_the_file(dataset: Path) -> None:
    from protoseg.data.datasets import load_image
    from protoseg.data.errors import DataError

    path = sorted((dataset / "train").glob("*.png"))[0]
    _truncate(path)
    with pytest.raises(DataError, match=re.escape(str(path))):
        load_image(path)


def test_training_checks_the_dataset_before_the_first_epoch(dataset: Path, tmp_path: Path) -> None:
    from protoseg.data.check import DatasetCheckError
    from protoseg.train.pipeline import train_stage1

    bad = _damage(dataset)
    cfg = _cfg("stage1.recipe=cam", f"data.root={dataset}", f"run.out_dir={tmp_path / 'run'}", "data.patch_size=32")
    with pytest.raises(DatasetCheckError, match=re.escape(str(bad["truncated"]))):
        train_stage1(cfg)
    assert not (tmp_path / "run" / "stage1" / "last.pt").exists()


# issue 22 item 6: 16-bit tiles loaded all white (PIL's convert saturates I;16) while `data check` said OK
def test_16_bit_tiles_load_scaled_to_8_bits_and_the_check_agrees(dataset: Path) -> None:
    from protoseg.data.check import check_dataset
    from protoseg.data.datasets import load_image
    from protoseg.data.errors import DataError

    train = sorted((dataset / "train").glob("*.png"))
    with Image.open(train[0]) as im:
        grey = np.asarray(im.convert("L"))
    Image.fromarray(grey.astype(np.uint16) * 257).save(train[0])  # the same picture at 16 bits (mode I;16)
    with Image.open(train[0]) as im:
        assert im.mode == "I;16"
    loaded = load_image(train[0])
    assert loaded.shape == (*grey.shape, 3) and np.array_equal(loaded[..., 1], grey)  # not 255 everywhere
    report = check_dataset(dataset)
    assert report.ok and f"16-bit grey image(s) (e.g. {train[0]})" in report.format()
    # a 32-bit image whose values do not fit 8 bits: refused by the check and by training, naming the file
    wide = train[1].with_suffix(".tif")
    train[1].unlink()
    Image.fromarray(np.full(grey.shape, 70000, np.int32)).save(wide)
    report = check_dataset(dataset)
    assert [p.path for p in report.all_problems] == [str(wide)] and "70000" in report.all_problems[0].problem
    with pytest.raises(DataError, match=re.escape(str(wide))):
        load_image(wide)


def _generic_without_masks(root: Path) -> Path:
    """A generic dataset (classes.yaml + labels.csv with a split column) whose val rows have no mask."""
    root.mkdir()
    (root / "classes.yaml").write_text("names: [tumour, stroma]\n")
    rng = np.random.default_rng(0)
    rows = ["path,split,tumour,stroma"]
    for i, split in enumerate(["train"] * 4 + ["val"] * 2):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / f"p{i}.png")
        rows.append(f"p{i}.png,{split},{i % 2},{1 - i % 2}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


# issue 22 item 11: a generic val split without masks trained an epoch, then KeyError 'mask'
def test_data_check_says_the_val_split_has_no_masks(tmp_path: Path, capsys: Any) -> None:
    root = _generic_without_masks(tmp_path / "generic")
    assert main(["data", "check", str(root), "-q"]) == 0
    out = capsys.readouterr().out
    assert "warning: no masks: the val split has image-level labels only, so validation scores no masks" in out


def test_training_without_val_masks_says_so_once_and_selects_by_the_image_labels(tmp_path: Path, caplog: Any) -> None:
    from protoseg.data.errors import DataError
    from protoseg.data.records import Split
    from protoseg.train.pipeline import evaluate_checkpoint, train_stage1

    root = _generic_without_masks(tmp_path / "generic")
    cfg = _cfg(
        "stage1.recipe=cam",
        f"data.root={root}",
        f"run.out_dir={tmp_path / 'run'}",
        "data.patch_size=32",
        "data.batch_size=2",
        "stage1.epochs=2",
    )
    with caplog.at_level("WARNING"):
        result = train_stage1(cfg)
    assert result.epochs_done == 2 and result.best is not None and result.best.is_file()
    skipped = [r.getMessage() for r in caplog.records if "has no masks" in r.getMessage()]
    assert len(skipped) == 1 and f"the val split of {root}" in skipped[0]
    assert "best.pt is chosen by label_free_presence_balanced_acc" in skipped[0]  # stage 1's mask-free selection
    assert result.selection_metric == "label_free_presence_balanced_acc"
    with pytest.raises(DataError, match=r"the val split of .* has no masks, so predictions cannot be scored"):
        evaluate_checkpoint(cfg, result.best, Split.VAL)


# ==== region GeoJSON and the region dataset (item 9) ===================================================
def _square(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]


def _feature(geometry: Any = None, properties: Any = None) -> dict:
    geometry = {"type": "Polygon", "coordinates": [_square(0, 0, 10, 10)]} if geometry is None else geometry
    props = {"classification": {"name": "TUM"}, "slide_path": "s.tif"} if properties is None else properties
    return {"type": "Feature", "geometry": geometry, "properties": props}


MALFORMED = {
    "unknown geometry type": _feature({"type": "Circle", "coordinates": [0, 0]}),
    "null geometry": {"type": "Feature", "geometry": None, "properties": {"classes": ["TUM"], "slide_path": "s"}},
    "text coordinates": _feature({"type": "Polygon", "coordinates": [["a", "b"]]}),
    "two-point ring": _feature({"type": "Polygon", "coordinates": [[[0, 0], [1, 1]]]}),
    "NaN coordinate": _feature({"type": "Polygon", "coordinates": [[[0, 0], [float("nan"), 0], [1, 1], [0, 0]]]}),
    "1e300 coordinate": _feature({"type": "Polygon", "coordinates": [_square(0, 0, 1e300, 1e300)]}),
    "empty MultiPolygon": _feature({"type": "MultiPolygon", "coordinates": []}),
    "properties not an object": _feature(properties=["TUM"]),
    "numeric classification": _feature(properties={"classification": 5, "slide_path": "s.tif"}),
    "numeric slide_path": _feature(properties={"classes": ["TUM"], "slide_path": 3}),
    "feature is text": "TUM",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_geojson_is_a_region_error_naming_the_feature(case: str, tmp_path: Path) -> None:
    from protoseg.data import RegionError, load_regions_geojson

    path = tmp_path / "r.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [_feature(), MALFORMED[case]]}))
    with pytest.raises(RegionError, match=re.escape(f"{path}: feature 1")):
        load_regions_geojson(path)


def test_geojson_features_must_be_a_list_and_points_are_skipped(tmp_path: Path) -> None:
    from protoseg.data import RegionError, load_regions_geojson

    path = tmp_path / "r.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": {"a": 1}}))
    with pytest.raises(RegionError, match="must be a list"):
        load_regions_geojson(path)
    point = _feature({"type": "Point", "coordinates": [1, 2]})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": [point, _feature()]}))
    assert len(load_regions_geojson(path)) == 1


def test_geojson_polygons_are_clipped_to_the_slide_or_refused(tmp_path: Path) -> None:
    from protoseg.data import RegionError, load_regions_geojson

    path = tmp_path / "r.geojson"
    crossing = _feature({"type": "Polygon", "coordinates": [_square(-50, 10, 150, 60)]})
    path.write_text(json.dumps([crossing]))
    (region,) = load_regions_geojson(path, slide_size=(100, 80))
    assert region.bounds == (0.0, 10.0, 100.0, 60.0)
    outside = _feature({"type": "Polygon", "coordinates": [_square(500, 500, 600, 600)]})
    path.write_text(json.dumps([outside]))
    with pytest.raises(RegionError, match="outside the slide"):
        load_regions_geojson(path, slide_size=(100, 80))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("far", [1e7, 1e300])
def test_region_dataset_never_hangs_on_huge_coordinates(far: float) -> None:
    from protoseg.data import RegionAnnotation, RegionError, WsiRegionDataset
    from test_data_regions import CANVAS_H, CANVAS_W, fake_opener

    square = np.array(_square(0, 0, far, far)[:4], float)
    try:
        ds = WsiRegionDataset(
            [RegionAnnotation(square, ("TUM",), "s.tif")], ["TUM"], 0.5, 100, slide_opener=fake_opener
        )
    except RegionError as exc:  # 1e300 is refused outright
        assert "1e+300" in str(exc)
        return
    assert len(ds) == (CANVAS_W // 100) * (CANVAS_H // 100)  # clipped to the slide: 7 x 3 patches
    assert all(x + w <= CANVAS_W and y + h <= CANVAS_H for x, y, w, h in (p.box for p in ds.patches))


def test_region_outside_the_slide_is_refused_not_white_patches() -> None:
    from protoseg.data import RegionAnnotation, RegionError, WsiRegionDataset
    from test_data_regions import fake_opener

    far = np.array(_square(5000, 5000, 6000, 6000)[:4], float)
    with pytest.raises(RegionError, match="outside the slide s.tif"):
        WsiRegionDataset([RegionAnnotation(far, ("TUM",), "s.tif")], ["TUM"], 0.5, 100, slide_opener=fake_opener)


# ==== resume / pseudo-mask mismatches (item 10) ========================================================
FIT = 32


class Patches(Dataset):
    """In-memory samples for stage 1 (image + label) and stage 2 (mask + confidence)."""

    def __init__(self, n: int = 4, classes: ClassSpec = CLASSES) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, FIT, FIT, generator=g)
        self.labels = torch.eye(classes.num_classes)[torch.arange(n) % classes.num_classes]
        self.masks = torch.randint(0, classes.num_classes + 1, (n, FIT, FIT), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {
            "image": self.images[i],
            "label": self.labels[i],
            "mask": self.masks[i],
            "confidence": torch.ones(FIT, FIT),
            "name": f"p{i}",
        }


def _stage2(out: Path, *overrides: str, classes: ClassSpec = CLASSES) -> Any:
    from protoseg.train.stage2 import Stage2Trainer

    cfg = _cfg(
        f"data.patch_size={FIT}",
        f"stage2.backbone={BACKBONE}",
        "stage2.decoder_dim=8",
        "stage2.epochs=1",
        "data.batch_size=4",
        f"run.out_dir={out}",
        *overrides,
    )
    return Stage2Trainer(cfg, Patches(classes=classes), None, classes)


@pytest.mark.parametrize(
    ("overrides", "classes", "named"),
    [
        (("stage2.decoder_dim=16",), CLASSES, "decoder_dim"),
        (("stage2.backbone=resnet18",), CLASSES, "backbone"),
        ((), ClassSpec(names=("a", "b")), "classes"),
    ],
)
def test_resume_with_another_network_or_classes_names_the_mismatch(
    tmp_path: Path, overrides: tuple[str, ...], classes: ClassSpec, named: str
) -> None:
    from protoseg.train.errors import TrainingError

    _stage2(tmp_path).fit()
    with pytest.raises(TrainingError, match=rf"cannot resume from .*last\.pt.*{named}"):
        _stage2(tmp_path, "stage2.epochs=2", *overrides, classes=classes).fit(resume=True)
    assert _stage2(tmp_path, "stage2.epochs=2").fit(resume=True).epochs_done == 2  # same settings still resume


def test_resume_with_another_recipe_names_it(tmp_path: Path) -> None:
    from protoseg.train.errors import TrainingError
    from protoseg.train.stage1 import Stage1Trainer
    from test_train_core import TinyEncoder

    def trainer(recipe: str, epochs: int) -> Stage1Trainer:
        cfg = _cfg(f"stage1.recipe={recipe}", "model.learnable_k=2", f"stage1.epochs={epochs}", "data.batch_size=4")
        cfg = dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, out_dir=str(tmp_path)))
        return Stage1Trainer(cfg, Patches(), None, CLASSES, encoder=TinyEncoder() if recipe == "lpd" else None)

    trainer("cam", 1).fit()
    with pytest.raises(TrainingError, match="stage1.recipe 'cam' vs 'lpd'"):
        trainer("lpd", 2).fit(resume=True)


def _stage1_checkpoint(path: Path, classes: ClassSpec) -> Path:
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.models.classnet import ClassNet
    from protoseg.models.factory import model_config
    from protoseg.train.recipes import classnet_config

    net = ClassNet(classnet_config(_cfg("stage1.recipe=cam"), classes.num_classes, 1, 1))
    save_checkpoint(Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), classes, patch_size=FIT), path)
    return path


def test_pseudo_masks_from_a_checkpoint_of_other_classes_name_both(tmp_path: Path) -> None:
    from protoseg.models.checkpoint import CheckpointError
    from protoseg.train.pipeline import TrainingData, make_pseudo_masks

    ckpt = _stage1_checkpoint(tmp_path / "s1.pt", CLASSES)
    data = TrainingData(Patches(classes=BCSS_WSSS), None, BCSS_WSSS, None)
    with pytest.raises(CheckpointError, match=r"s1\.pt was trained on classes \['tumour'.*dataset has \['TUM'"):
        make_pseudo_masks(_cfg(f"data.patch_size={FIT}"), ckpt, tmp_path / "pseudo", data=data)


def test_stage2_on_pseudo_masks_of_other_classes_names_both(tmp_path: Path) -> None:
    from protoseg.train.pipeline import TrainingData, make_pseudo_masks, train_stage2
    from protoseg.train.pseudo import PseudoMaskError

    ckpt = _stage1_checkpoint(tmp_path / "s1.pt", CLASSES)
    cfg = _cfg(f"data.patch_size={FIT}", "data.batch_size=4", f"run.out_dir={tmp_path}")
    pseudo = make_pseudo_masks(cfg, ckpt, tmp_path / "pseudo", data=TrainingData(Patches(), None, CLASSES, None))
    other = TrainingData(Patches(classes=BCSS_WSSS), None, BCSS_WSSS, None)
    with pytest.raises(PseudoMaskError, match=r"exported for classes \['tumour'.*dataset has \['TUM'"):
        train_stage2(cfg, pseudo, data=other)


# ==== output folders and files: only protoseg's own outputs are replaced (item 1) ========================
def _user_folder(path: Path) -> Path:
    """A user's folder that happens to hold a manifest.json (the case that was deleted)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text('{"mine": true}')
    (path / "notes.txt").write_text("years of work")
    return path


def test_bank_save_never_replaces_a_folder_it_did_not_write(tmp_path: Path) -> None:
    from protoseg.bank import load_bank, save_bank
    from protoseg.outputs import MARKER, OutputOwnershipError
    from test_bank_store import small_bank

    user = _user_folder(tmp_path / "user")
    for overwrite in (False, True):  # --overwrite replaces only what protoseg wrote (issue 22 item 1)
        with pytest.raises(OutputOwnershipError, match=r"user/manifest\.json \(and 1 more\), not written by protoseg"):
            save_bank(small_bank(), user, overwrite=overwrite)
        assert (user / "notes.txt").read_text() == "years of work"
    bank = save_bank(small_bank(), tmp_path / "bank")
    save_bank(small_bank(), bank)  # its own output: replaced atomically
    assert (bank / MARKER).is_file() and len(load_bank(bank)) == 6


def test_bank_folders_written_before_the_marker_are_still_replaceable(tmp_path: Path) -> None:
    from protoseg.bank import save_bank
    from protoseg.outputs import MARKER, OutputOwnershipError
    from test_bank_store import small_bank

    legacy = save_bank(small_bank(), tmp_path / "legacy")
    (legacy / MARKER).unlink()  # as written by an older protoseg: valid manifest, only the bank's files
    save_bank(small_bank(), legacy)
    assert (legacy / MARKER).is_file()
    (legacy / MARKER).unlink()
    (legacy / "notes.txt").write_text("added by the user")  # anything else in it: the user's folder now
    with pytest.raises(OutputOwnershipError):
        save_bank(small_bank(), legacy)
    assert (legacy / "notes.txt").exists()


def test_cli_bank_build_refuses_a_foreign_out_before_any_work(tmp_path: Path, capsys: Any) -> None:
    user = _user_folder(tmp_path / "user")
    assert main(["bank", "build", "--out", str(user), "--data", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert str(user) in err and "--overwrite" in err and "Traceback" not in err
    assert sorted(p.name for p in user.iterdir()) == ["manifest.json", "notes.txt"]


def _finished_prediction(out: Path, seed: int = 11, **kw: Any) -> Path:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor
    from test_infer_fakes import CLASSES as FAKE_CLASSES
    from test_infer_fakes import SmoothModel, smooth_image

    slide = ArraySlide(smooth_image(150, 200, seed=seed), mpp=0.5)
    p = Predictor(SmoothModel(), classes=FAKE_CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)
    predict_slide_to_omezarr(p, slide, out, chunk=32, tissue_only=False, **kw)
    return out


@pytest.mark.parametrize("fmt", ["ome-tiff", "areas", "geojson", "ome-zarr"])
def test_export_out_replaces_only_its_own_exports(tmp_path: Path, fmt: str, capsys: Any) -> None:
    pred = _finished_prediction(tmp_path / "p.zarr")
    user = tmp_path / ("user.zarr" if fmt == "ome-zarr" else "user.txt")
    if fmt == "ome-zarr":
        _user_folder(user)
    else:
        user.write_text("the user's file")
    before = sorted(p.name for p in user.iterdir()) if user.is_dir() else user.read_text()
    assert main(["export", str(pred), "-f", fmt, "-o", str(user)]) == 2
    err = capsys.readouterr().err
    assert str(user) in err and "--overwrite" in err and "Traceback" not in err
    assert (sorted(p.name for p in user.iterdir()) if user.is_dir() else user.read_text()) == before
    own = tmp_path / ("own.zarr" if fmt == "ome-zarr" else "own.out")
    assert main(["export", str(pred), "-f", fmt, "-o", str(own)]) == 0
    assert main(["export", str(pred), "-f", fmt, "-o", str(own)]) == 0  # re-export over its own output
    # a file the user named is replaced when asked; a folder holding the user's files never is (issue 22 item 1)
    assert main(["export", str(pred), "-f", fmt, "-o", str(user), "--overwrite"]) == (2 if fmt == "ome-zarr" else 0)
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_synth_outputs_refuse_existing_files(tmp_path: Path, capsys: Any) -> None:
    slide = tmp_path / "s.tif"
    slide.write_bytes(b"the user's slide")
    assert main(["synth", "slide", str(slide), "--size", "64x48", "--tile", "16"]) == 2
    assert slide.read_bytes() == b"the user's slide" and "--overwrite" in capsys.readouterr().err
    assert main(["synth", "slide", str(slide), "--size", "64x48", "--tile", "16", "--overwrite"]) == 0
    assert slide.stat().st_size > 100 and (tmp_path / "s_mask.png").is_file()
    user = _user_folder(tmp_path / "data")
    assert main(["synth", "dataset", str(user), "--n-train", "1", "--n-val", "0", "--n-test", "0"]) == 2
    assert (user / "notes.txt").exists()
    ours = tmp_path / "synth"
    for _ in range(2):  # its own dataset folder is replaced
        assert (
            main(["synth", "dataset", str(ours), "--n-train", "2", "--n-val", "0", "--n-test", "0", "--size", "16"])
            == 0
        )
    assert len(list((ours / "train").glob("*.png"))) == 2


# ==== batch prediction: resume only the same slide with the same model (item 2) ===========================
def _predictor(model: Any = None, **kw: Any) -> Any:
    from protoseg.infer.predictor import Predictor
    from test_infer_fakes import CLASSES as FAKE_CLASSES
    from test_infer_fakes import SmoothModel

    opts = {"mpp": 0.5, "tile_size": 32, "overlap": 8, "batch_size": 4, **kw}
    return Predictor(model if model is not None else SmoothModel(), classes=FAKE_CLASSES, **opts)


class _Weighted(torch.nn.Module):
    """A model with weights: two instances with different weights must not share a resumed output."""

    def __init__(self, bias: float) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.conv.weight.fill_(0.1)
            self.conv.bias.fill_(bias)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.conv(x), dim=1)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("weights", "model weights"),
        ("slide", "slide content"),
        ("overlap", "tile overlap"),
        ("tta", "TTA"),
    ],
)
def test_resume_refuses_another_slide_or_model_naming_what_differs(tmp_path: Path, change: str, named: str) -> None:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.errors import OutputError
    from protoseg.infer.memory import ArraySlide
    from test_infer_fakes import smooth_image

    out = tmp_path / "p.zarr"
    slide = ArraySlide(smooth_image(96, 128, seed=1), mpp=0.5)
    predict_slide_to_omezarr(_predictor(_Weighted(0.0)), slide, out, chunk=32, tissue_only=False)
    other_slide = ArraySlide(smooth_image(96, 128, seed=2), mpp=0.5)  # same size, other content
    predictor = {
        "weights": _predictor(_Weighted(0.5)),
        "slide": _predictor(_Weighted(0.0)),
        "overlap": _predictor(_Weighted(0.0), overlap=4),
        "tta": _predictor(_Weighted(0.0), tta=True),
    }[change]
    with pytest.raises(OutputError, match=rf"another slide or model \(.*{named}.*differ"):
        predict_slide_to_omezarr(
            predictor, other_slide if change == "slide" else slide, out, chunk=32, tissue_only=False
        )
    again = predict_slide_to_omezarr(_predictor(_Weighted(0.0)), slide, out, chunk=32, tissue_only=False)
    assert again.chunks_resumed == again.chunks_total and again.tiles_predicted == 0  # same inputs still resume


def test_resume_refuses_another_slide_file_of_the_same_size(tmp_path: Path) -> None:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.errors import OutputError
    from protoseg.slide.writer import write_pyramidal_tiff
    from test_infer_fakes import smooth_image

    for i in range(2):
        write_pyramidal_tiff(tmp_path / f"s{i}.tif", smooth_image(96, 128, seed=i), mpp=0.5, tile_size=64)
    out = tmp_path / "p.zarr"
    predict_slide_to_omezarr(_predictor(), tmp_path / "s0.tif", out, chunk=32, tissue_only=False)
    (tmp_path / "s0.tif").rename(tmp_path / "moved.tif")
    (tmp_path / "s1.tif").rename(tmp_path / "s0.tif")  # another slide under the same name and size
    with pytest.raises(OutputError, match="slide file header.*slide content"):
        predict_slide_to_omezarr(_predictor(), tmp_path / "s0.tif", out, chunk=32, tissue_only=False)


def test_default_whole_slide_output_is_unique_per_slide_and_checkpoint(tmp_path: Path) -> None:
    import os

    from protoseg.infer.identity import default_prediction_name

    a, b = tmp_path / "a" / "slide.svs", tmp_path / "b" / "slide.svs"
    c1, c2 = tmp_path / "m1.pt", tmp_path / "m2.pt"
    c1.write_bytes(b"1")
    c2.write_bytes(b"2")
    names = {default_prediction_name(s, c) for s in (a, b) for c in (c1, c2)}
    assert len(names) == 4 and all(n.startswith("slide-") and n.endswith(".zarr") for n in names)
    before = default_prediction_name(a, c1)
    c1.write_bytes(b"retrained")
    os.utime(c1, ns=(1, 1))
    assert default_prediction_name(a, c1) != before and default_prediction_name(a, c1) == default_prediction_name(a, c1)


# ==== protoseg predict: resume and --overwrite from the CLI, single and multi-worker (item 4) ===============
@pytest.fixture(scope="module")
def predict_files(tmp_path_factory: Any) -> tuple[Path, Path, Path]:
    """A tiny stage-2 checkpoint (mpp 1), a small all-tissue slide and a bigger one (mpp 0.5)."""
    from protoseg.models import build_model
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.slide.writer import write_pyramidal_tiff
    from test_infer_fakes import CLASSES as FAKE_CLASSES
    from test_infer_fakes import smooth_image

    root = tmp_path_factory.mktemp("predict")
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 3, "decoder_dim": 8, "weights": None}
    torch.manual_seed(0)
    model = build_model(cfg)
    ckpt = Checkpoint(Stage.STAGE2, cfg, model.state_dict(), FAKE_CLASSES, mpp=1.0, patch_size=32)
    save_checkpoint(ckpt, root / "m.pt")
    for name, (h, w) in (("small", (96, 128)), ("big", (512, 768))):
        img = smooth_image(h, w, seed=3) // 2 + np.array([100, 30, 90], np.uint8)  # tissue-coloured everywhere
        write_pyramidal_tiff(root / f"{name}.tif", img, mpp=0.5, tile_size=64, compression=None)
    return root / "m.pt", root / "small.tif", root / "big.tif"


def _predict_argv(slides: list[Path], ckpt: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", *map(str, slides), "-c", str(ckpt), "-o", str(out), "--device", "cpu", "--chunk", "32", *extra]


def _arrays(path: Path) -> list[np.ndarray]:
    from protoseg.infer.omezarr import open_prediction

    pred = open_prediction(path)
    levels = range(pred.num_levels)
    return [pred.group["done"][...], *(pred.probs(k)[...] for k in levels), *(pred.mask(k)[...] for k in levels)]


def _capture_results(monkeypatch: Any) -> list[Any]:
    import protoseg.infer.batch as batch

    results, real = [], batch.predict_slide_to_omezarr

    def spy(*args: Any, **kw: Any) -> Any:
        results.append(real(*args, **kw))
        return results[-1]

    monkeypatch.setattr(batch, "predict_slide_to_omezarr", spy)
    return results


def test_cli_predict_resumes_and_overwrites(predict_files: tuple, tmp_path: Path, monkeypatch: Any) -> None:
    ckpt, small, _ = predict_files
    out = tmp_path / "preds"
    results = _capture_results(monkeypatch)
    assert main(_predict_argv([small], ckpt, out)) == 0
    first = _arrays(out / "small.zarr")
    assert main(_predict_argv([small], ckpt, out)) == 0  # an --out holding <slide>.zarr resumes it
    assert results[-1].chunks_resumed == results[-1].chunks_total and results[-1].tiles_predicted == 0
    assert main(_predict_argv([small], ckpt, out, "--overwrite")) == 0
    assert results[-1].chunks_resumed == 0 and results[-1].tiles_predicted > 0
    assert all(np.array_equal(a, b) for a, b in zip(first, _arrays(out / "small.zarr")))


def test_cli_predict_refuses_a_foreign_slide_folder(predict_files: tuple, tmp_path: Path, capsys: Any) -> None:
    ckpt, small, _ = predict_files
    out = tmp_path / "preds"
    _user_folder(out / "small.zarr")
    for extra in ((), ("--overwrite",)):  # --overwrite never deletes the user's files (issue 22 item 1)
        assert main(_predict_argv([small], ckpt, out, *extra)) == 2
        err = capsys.readouterr().err
        assert "small.zarr/manifest.json" in err and "not written by protoseg" in err and "Traceback" not in err
        assert sorted(p.name for p in (out / "small.zarr").iterdir()) == ["manifest.json", "notes.txt"]


@pytest.mark.slow
def test_cli_predict_after_kill_9_resumes_to_identical_bytes(predict_files: tuple, tmp_path: Path, monkeypatch) -> None:
    import os
    import signal
    import subprocess
    import time

    from protoseg.infer.chunks import SlideChunks
    from protoseg.infer.omezarr import open_prediction
    from protoseg.infer.plan import default_strip, strip_order
    from protoseg.infer.predictor import Predictor
    from protoseg.slide import open_slide

    ckpt, _, big = predict_files
    results = _capture_results(monkeypatch)
    assert main(_predict_argv([big], ckpt, tmp_path / "full")) == 0
    full = results[-1]
    out = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS.parent / "src")}
    argv = [sys.executable, "-m", "protoseg", *_predict_argv([big], ckpt, out)]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.monotonic() + 120
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                done = int(np.count_nonzero(open_prediction(out / "big.zarr").group["done"][...]))
            except Exception:  # noqa: BLE001 - not created yet, or a chunk file being written
                done = 0
            if done >= full.chunks_total // 4:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the prediction finished before it could be killed; make the slide bigger"
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    done_at_kill = open_prediction(out / "big.zarr").group["done"][...].astype(bool)
    assert 0 < done_at_kill.sum() < done_at_kill.size
    assert main(_predict_argv([big], ckpt, tmp_path / "killed")) == 0  # the same command resumes
    resumed = results[-1]
    assert resumed.chunks_resumed == int(done_at_kill.sum())
    assert all(np.array_equal(a, b) for a, b in zip(_arrays(tmp_path / "full" / "big.zarr"), _arrays(out / "big.zarr")))
    # tiles predicted again: those shared by finished and unfinished chunks of a strip; at most one chunk row
    predictor = Predictor(ckpt, device="cpu")
    layout = SlideChunks(predictor, open_slide(big), chunk=32)
    rows, cols = layout.grid0.shape
    strip = default_strip(layout.geom.grid, layout.chunk, 4 * layout.channels * predictor.tile_size**2)
    done_tiles: set = set()
    todo_tiles: set = set()
    for r, c in strip_order(rows, cols, strip):
        tiles = {(c // strip, t) for t in layout.tiles_for_chunk(r, c)}
        (done_tiles if done_at_kill[r, c] else todo_tiles).update(tiles)
    one_row = max(
        len({t for c in range(c0, min(cols, c0 + strip)) for t in layout.tiles_for_chunk(r, c)})
        for r in range(rows)
        for c0 in range(0, cols, strip)
    )
    assert resumed.tiles_predicted == len(todo_tiles)  # each needed tile once per strip, nothing more
    assert len(done_tiles & todo_tiles) <= one_row


@pytest.mark.slow
def test_cli_predict_two_workers_resume_and_overwrite(predict_files: tuple, tmp_path: Path) -> None:
    ckpt, small, _ = predict_files
    out = tmp_path / "preds"
    assert main(_predict_argv([small], ckpt, out)) == 0
    first = _arrays(out / "small.zarr")
    stamp = (out / "small.zarr" / "done" / "c" / "0" / "0").stat().st_mtime_ns
    copy = out.parent / "copy.tif"
    copy.write_bytes(small.read_bytes())
    assert main(_predict_argv([small, copy], ckpt, out, "--workers", "2")) == 0  # resumes small, predicts copy
    assert (out / "small.zarr" / "done" / "c" / "0" / "0").stat().st_mtime_ns == stamp  # nothing recomputed
    # same prediction: the worker processes run torch with their own intra-op thread count, and CPU float
    # sums split over other thread counts can move a uint8 score by one step (the kill -9 test above, one
    # process, is bit-exact)
    second = _arrays(out / "copy.zarr")
    levels = (len(first) - 1) // 2
    np.testing.assert_array_equal(first[0], second[0])  # every chunk done
    for a, b in zip(first[1 : 1 + levels], second[1 : 1 + levels]):  # uint8 class scores
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 1
    for a, b in zip(first[1 + levels :], second[1 + levels :]):  # class masks: only near-ties may flip
        assert (a != b).mean() < 0.01
    # --overwrite with workers passes the same options to the same library call (thread workers: faster start)
    from protoseg.cli import build_parser
    from protoseg.cli.predict import _batch_options, _predictor_options
    from protoseg.infer.distributed import predict_many

    args = build_parser().parse_args(_predict_argv([small, copy], ckpt, out, "--workers", "2", "--overwrite"))
    outcomes = predict_many(
        args.slides,
        args.checkpoint,
        args.out,
        n_workers=2,
        processes=False,
        predictor_options=_predictor_options(args),
        **_batch_options(args),
    )
    assert all(o.ok for o in outcomes) and outcomes[0].tiles > 0
    assert (out / "small.zarr" / "done" / "c" / "0" / "0").stat().st_mtime_ns != stamp
    assert all(np.array_equal(a, b) for a, b in zip(first, _arrays(out / "small.zarr")))


# ==== training: resume reproduces the run; temporaries, metrics log, one process per folder (item 5) =========
class _Noisy(Dataset):
    """Samples whose augmentation draws from python, NumPy and torch random numbers (as real ones do)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, i: int) -> dict[str, Any]:
        import random

        g = torch.Generator().manual_seed(i)
        image = torch.rand(3, 8, 8, generator=g) + 0.05 * torch.randn(3, 8, 8)
        image = image * float(np.random.uniform(0.9, 1.1)) + random.uniform(-0.05, 0.05)
        return {"image": image, "target": torch.tensor(float(i % 3))}


class _TinyTrainer:
    """Factory of a minimal ``Trainer``: a 1x1 conv regressor, validation = mean absolute error."""

    @staticmethod
    def make(out: Path, epochs: int, **kw: Any) -> Any:
        from protoseg.models.checkpoint import Checkpoint, Stage
        from protoseg.train.engine import OptimConfig, Trainer

        class Tiny(Trainer):
            stage = "stage2"
            monitor = "score"

            def __init__(self) -> None:
                optim = OptimConfig(epochs, 0.05, 0.0, 1.0, 4, amp=False, seed=3)
                super().__init__(optim, out, device="cpu", **kw)
                nn = torch.nn
                self.net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.Dropout(0.3), nn.Conv2d(4, 1, 1))
                self.data = _Noisy()

            @property
            def model(self) -> torch.nn.Module:
                return self.net

            @property
            def train_dataset(self) -> Dataset:
                return self.data

            def training_loss(self, model: torch.nn.Module, batch: dict, step: int) -> tuple[torch.Tensor, dict]:
                pred = model(batch["image"]).mean(dim=(1, 2, 3))
                return torch.nn.functional.mse_loss(pred, batch["target"]), {}

            def validate(self) -> dict[str, float]:
                x = torch.stack([self.data[i]["image"] for i in range(4)])
                return {"score": -float(self.net(x).abs().mean())}

            def make_checkpoint(self, epoch: int, step: int, metrics: dict, extra: dict) -> Checkpoint:
                state = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
                return Checkpoint(
                    Stage.STAGE2, {}, state, CLASSES, epoch=epoch, step=step, metrics=metrics, extra=extra
                )

        return Tiny()


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from protoseg.models.checkpoint import load_checkpoint

    return load_checkpoint(path).state_dict


def test_resumed_training_is_bit_identical_and_cleans_up(tmp_path: Path) -> None:
    from protoseg.cancel import CancelToken
    from protoseg.train.events import EventKind

    full = tmp_path / "full"
    _TinyTrainer.make(full, 3).fit()
    run = tmp_path / "run"
    token = CancelToken()

    def stop_after_epoch_1(event: Any) -> None:
        if event.kind is EventKind.CHECKPOINT and event.epoch == 1:
            token.cancel()

    assert _TinyTrainer.make(run, 3, callbacks=[stop_after_epoch_1], cancel=token).fit().cancelled
    # what a kill -9 leaves: a half-written checkpoint temporary and a log row of an epoch never saved
    (run / ".last.pt.x8k2.tmp").write_bytes(b"\0" * 4096)
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"stage": "stage2", "epoch": 2, "step": 6, "score": 0.0}) + "\n")
    torch.rand(100), np.random.rand(100)  # a new process: the global random states are elsewhere
    res = _TinyTrainer.make(run, 3).fit(resume=True)
    assert res.epochs_done == 3 and not res.cancelled
    assert (run / "metrics.jsonl").read_text() == (full / "metrics.jsonl").read_text()  # same rows, once each
    a, b = _weights(full / "last.pt"), _weights(run / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(run.glob(".*.tmp")) and not (run / ".protoseg-train.lock").exists()


def test_a_second_training_into_the_same_folder_is_refused(tmp_path: Path) -> None:
    import os
    import socket
    import subprocess

    from protoseg.train.errors import TrainingError

    tmp_path.mkdir(exist_ok=True)
    lock = tmp_path / ".protoseg-train.lock"
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname()}))
        expected = rf"another protoseg training \(pid {sleeper.pid}.*{re.escape(str(lock))}"
        with pytest.raises(TrainingError, match=expected):
            _TinyTrainer.make(tmp_path, 1).fit()
        assert not (tmp_path / "last.pt").exists() and lock.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert not os.path.exists(f"/proc/{sleeper.pid}")  # reaped: its stale lock is taken over
    assert _TinyTrainer.make(tmp_path, 1).fit().epochs_done == 1
    assert not lock.exists()
    from protoseg.train.runstate import RunLock

    with RunLock(tmp_path), pytest.raises(TrainingError, match="a training in this process is already writing"):
        _TinyTrainer.make(tmp_path, 1).fit()  # e.g. a second GUI job: same pid, still refused


# ==== damaged predictions: exports refuse them and say how to repair; the reader labels them (item 6) ========
def _chunk_files(pred: Path, array: str) -> list[Path]:
    return sorted(p for p in (pred / array).rglob("*") if p.is_file() and p.name != "zarr.json")


def test_export_refuses_a_prediction_with_deleted_chunks_and_resume_repairs_it(tmp_path: Path) -> None:
    from protoseg.export import ExportError, export_prediction

    pred = _finished_prediction(tmp_path / "p.zarr")
    good = export_prediction(pred, "areas", tmp_path / "good.csv").read_text()
    victim = _chunk_files(pred, "probs/0")[3]
    victim.unlink()
    with pytest.raises(ExportError, match=r"damaged: 1 chunk file\(s\) missing at level 0.*re-run `protoseg predict`"):
        export_prediction(pred, "areas", tmp_path / "bad.csv")
    assert not (tmp_path / "bad.csv").exists()
    _finished_prediction(pred)  # the same run again: resumes, recomputing only that chunk
    assert export_prediction(pred, "areas", tmp_path / "again.csv").read_text() == good


def test_export_refuses_a_deleted_mask_chunk_naming_it(tmp_path: Path) -> None:
    from protoseg.export import ExportError, export_prediction

    pred = _finished_prediction(tmp_path / "p.zarr")
    victim = _chunk_files(pred, "mask/0")[-1]
    victim.unlink()
    with pytest.raises(ExportError, match=rf"mask chunk at row \d+, col \d+ \({re.escape(str(victim))}\)"):
        export_prediction(pred, "ome-tiff", tmp_path / "m.ome.tif")


def test_export_of_a_garbled_chunk_names_it_instead_of_a_codec_traceback(tmp_path: Path, capsys: Any) -> None:
    pred = _finished_prediction(tmp_path / "p.zarr")
    victim = _chunk_files(pred, "mask/0")[2]
    victim.write_bytes(b"garbage" * 10)
    for fmt in ("areas", "ome-tiff", "geojson"):
        assert main(["export", str(pred), "-f", fmt, "-o", str(tmp_path / f"out.{fmt}")]) == 2
        err = capsys.readouterr().err
        assert str(victim) in err and "delete that file and re-run `protoseg predict`" in err
        assert "Traceback" not in err


def test_export_refuses_unmarked_chunks_and_the_reader_labels_them(tmp_path: Path) -> None:
    from protoseg.export import ExportError, export_prediction
    from protoseg.infer.omezarr import open_prediction
    from protoseg.napari.reader import read_prediction

    pred = _finished_prediction(tmp_path / "p.zarr")
    group = open_prediction(pred, mode="r+").group
    group["done"][1, 2] = 0  # as a killed run leaves it
    with pytest.raises(ExportError, match=r"unfinished prediction: 1 of 35 chunks .*row 1, col 2.*resumes"):
        export_prediction(pred, "geojson", tmp_path / "x.geojson")
    layers = read_prediction(str(pred))
    assert layers and all("[unfinished: 34/35 chunks]" in kw["name"] for _, kw, _ in layers)
    assert all(kw["metadata"]["protoseg_unfinished"] == {"chunks_done": 34, "chunks_total": 35} for _, kw, _ in layers)
    group["done"][1, 2] = 1
    assert not any("unfinished" in kw["name"] for _, kw, _ in read_prediction(str(pred)))


def test_export_of_a_prediction_missing_an_array_says_to_predict_again(tmp_path: Path, capsys: Any) -> None:
    pred = _finished_prediction(tmp_path / "p.zarr")
    (pred / "mask" / "0" / "zarr.json").unlink()  # was a raw KeyError
    assert main(["export", str(pred), "-f", "areas", "-o", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "array mask/0 is missing or unreadable" in err and "--overwrite" in err and "Traceback" not in err


# ==== checkpoints holding code are refused, without torch's advice to unpickle them (item 11) ==============
class _Payload:
    def __reduce__(self) -> tuple:
        return (print, ("this ran",))


def test_checkpoint_with_executable_objects_is_refused_plainly(tmp_path: Path, capsys: Any) -> None:
    from protoseg.models.checkpoint import CheckpointError, load_checkpoint

    path = tmp_path / "evil.pt"
    torch.save({"format": "protoseg-checkpoint", "state_dict": _Payload()}, path)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "executable" in message and "will not be loaded" in message
    assert "weights_only" not in message and "truncated" not in message
    assert "this ran" not in capsys.readouterr().out


# issue 22 item 14: a real payload (os.system) was reported as "truncated or damaged"
class _SystemPayload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch.save", "torch.save protocol 4", "pickle protocol 5"])
def test_checkpoint_running_a_shell_command_is_refused_as_unsafe(tmp_path: Path, writer: str) -> None:
    import pickle

    from protoseg.models.checkpoint import CheckpointError, load_checkpoint

    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    payload = {"format": "protoseg-checkpoint", "state_dict": _SystemPayload(marker)}
    if writer == "pickle protocol 5":
        path.write_bytes(pickle.dumps(payload, protocol=5))
    else:
        torch.save(payload, path, pickle_protocol=4 if writer.endswith("4") else 2)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    message = str(err.value)
    assert str(path) in message and "refused as unsafe" in message and "system" in message
    assert "truncated" not in message and "weights_only" not in message and "\n" not in message
    assert not marker.exists()


# ==== non-finite weights and scores stop prediction, naming the checkpoint (issue 22 item 7) ==============
def _damaged_weights(src: Path, dst: Path, name_part: str, value: float) -> Path:
    """A copy of checkpoint ``src`` with every value of the first tensor whose name holds ``name_part`` set."""
    from protoseg.models.checkpoint import Checkpoint, save_checkpoint

    payload = torch.load(src, weights_only=True)
    key = next(k for k in payload["state_dict"] if name_part in k)
    payload["state_dict"][key] = torch.full_like(payload["state_dict"][key], value)
    save_checkpoint(Checkpoint.from_payload(payload), dst)
    return dst


def test_checkpoint_with_nan_weights_is_refused_naming_it(predict_files: tuple, tmp_path: Path, capsys: Any) -> None:
    from protoseg.models.checkpoint import CheckpointError, load_checkpoint

    ckpt, small, _ = predict_files
    bad = _damaged_weights(ckpt, tmp_path / "nan.pt", "weight", float("nan"))
    with pytest.raises(CheckpointError, match=re.escape(f"checkpoint {bad} has NaN or infinite weights")):
        load_checkpoint(bad)
    assert main(_predict_argv([small], bad, tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {bad} has NaN or infinite weights" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_non_finite_scores_stop_prediction_naming_the_checkpoint(
    predict_files: tuple, tmp_path: Path, capsys: Any
) -> None:
    from protoseg.infer.errors import OutputError
    from protoseg.infer.omezarr import check_finished, open_prediction

    ckpt, small, _ = predict_files
    # finite weights, NaN scores: a batch-norm variance of -1 takes the square root of a negative number
    bad = _damaged_weights(ckpt, tmp_path / "var.pt", "running_var", -1.0)
    out = tmp_path / "out"
    assert main(_predict_argv([small], bad, out)) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {bad.resolve()} gave NaN or infinite scores" in err and "Traceback" not in err
    with pytest.raises(OutputError, match="unfinished prediction"):  # never marked complete
        check_finished(open_prediction(out / "small.zarr"))


@pytest.mark.parametrize("device_blend", [False, True])
def test_nan_scores_of_a_module_are_an_inference_error(device_blend: bool) -> None:
    from protoseg.infer.errors import InferenceError
    from protoseg.infer.memory import ArraySlide
    from test_infer_fakes import ConstantModel, smooth_image

    predictor = _predictor(ConstantModel((float("nan"), 0.2, 0.3, 0.4)), device_blend=device_blend)
    with pytest.raises(InferenceError, match=r"the model gave NaN or infinite scores"):
        predictor.predict_region(ArraySlide(smooth_image(64, 64), mpp=0.5), (0, 0, 64, 64))
