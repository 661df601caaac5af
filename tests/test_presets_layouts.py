"""Presets name a method, never the data (issue 24 item 5): every shipped preset opens generic, BCSS-WSSS and
LUAD-HistoSeg folders, and one written for other classes says in one log line what it changes."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from protoseg.cli import build_parser, main
from protoseg.cli.common import config_from_args
from protoseg.data.datasets import open_dataset
from protoseg.data.records import Layout
from protoseg.presets import PresetError, list_presets, load_preset, preset_changes, preset_classes, preset_dict

TINY = [
    "--epochs",
    "1",
    "--patch-size",
    "32",
    "--batch-size",
    "2",
    "--device",
    "cpu",
    "--set",
    "model.backbone=resnet18",
    "--set",
    "model.weights=null",
    "--set",
    "stage1.warm_start=none",
    "--set",
    "bank.encoder.input_size=64",
    "--set",
    "bank.k=1",
    "--set",
    "bank.n_per_cluster=2",
    "--set",
    "data.num_workers=0",
]


def _img(path: Path, seed: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def _bcss(root: Path) -> Path:
    for i, label in enumerate(["1000", "0100", "1100", "0011"]):
        _img(root / "train" / f"s{i}_MPP-0.5000+0[{label}].png", i)
    return root


def _luad(root: Path) -> Path:
    for i, label in enumerate(["1 0 0 0", "0 0 0 1", "1 0 0 1", "0 1 1 0"]):
        _img(root / "train" / f"{i}-0-0-[{label}].png", i)
    return root


def _generic(root: Path) -> Path:
    """A WSSS4LUAD-like generic folder: classes TE, TAS, NOR from labels.csv."""
    rows = ["path,TE,TAS,NOR", "t0.png,1,0,0", "t1.png,0,1,0", "t2.png,0,0,1", "t3.png,1,1,0"]
    for i in range(4):
        _img(root / f"t{i}.png", i)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


LAYOUTS = {"bcss_wsss": _bcss, "luad_histoseg": _luad, "generic": _generic}


def test_no_preset_sets_the_data_and_each_records_its_classes():
    for name in list_presets():
        assert not {"root", "layout"} & set(preset_dict(name).get("data", {})), name
        assert "classes" not in preset_dict(name) and len(preset_classes(name)) == 4
        assert load_preset(name).data.layout is None
    assert preset_classes("pbip-luad") == ("TE", "NEC", "LYM", "TAS")


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("preset", ["pbip-luad", "pbip-bcss", "plim-bcss"])
def test_every_preset_opens_every_layout(tmp_path, caplog, layout, preset):
    root = LAYOUTS[layout](tmp_path / layout)
    args = build_parser().parse_args(["train", "stage1", "--preset", preset, "--set", f"data.root={root}"])
    with caplog.at_level(logging.INFO, logger="protoseg.presets"):
        cfg = config_from_args(args)
    ds = open_dataset(cfg.data.root, "train", cfg.data.layout)
    assert ds.layout is Layout(layout)
    if preset != "plim-bcss":  # nothing class-specific: the preset's method settings are kept whole
        assert cfg.stage1 == load_preset(preset).stage1
    notes = [r.getMessage() for r in caplog.records if r.name == "protoseg.presets"]
    if preset_classes(preset) == ds.classes.names:
        assert notes == []
    else:
        assert len(notes) == 1 and f"preset {preset} was written for classes" in notes[0]
        assert f"the data has {', '.join(ds.classes.names)}" in notes[0]
    descriptions = cfg.stage1.plim.descriptions
    assert all(d.split("=")[0] in ds.classes.names for d in descriptions)  # never a class the data lacks


def test_class_change_line_names_what_changes():
    _, line = preset_changes("pbip-luad", ("TE", "TAS", "NOR"))
    assert line is not None and "3 classes instead of 4" in line and "not in the data: NEC, LYM" in line
    assert "new: NOR" in line
    settings, line = preset_changes("plim-bcss", ("TUM", "STR"))
    assert "drops stage1.plim.descriptions of LYM, NEC" in str(line)
    assert settings["stage1"]["plim"]["descriptions"] == ["TUM=tumor", "STR=stroma"]
    assert preset_changes("pbip-bcss", ("TUM", "STR", "LYM", "NEC"))[1] is None
    assert "another order" in str(preset_changes("pbip-bcss", ("STR", "TUM", "LYM", "NEC"))[1])


def test_a_preset_that_sets_the_layout_is_refused(monkeypatch):
    import protoseg.presets as presets

    monkeypatch.setattr(presets, "preset_text", lambda name: "data:\n  layout: luad_histoseg\n")
    with pytest.raises(PresetError, match=r"sets data\.layout.*remove it"):
        presets.preset_dict("x")


@pytest.mark.slow
def test_pbip_luad_preset_trains_on_a_generic_folder(tmp_path, capsys):
    """The issue's refusal: ``--preset pbip-luad`` on a generic (WSSS4LUAD-like) folder trains."""
    root = _generic(tmp_path / "data")
    argv = ["train", "stage1", "--preset", "pbip-luad", "--data", str(root), "--out", str(tmp_path / "run"), *TINY]
    assert main(argv) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "stage1" / "last.pt").is_file()
