"""Nothing lost, nothing replaced (issue 22, items 1-5): ``--overwrite`` replaces only protoseg's own outputs,
exports are recognised by protoseg's own marker, a finished run is not trained over without ``--resume`` or
``--overwrite``, the metrics log is never appended through a link, and outputs honour the umask.

Each case ends in a one-line error naming the file and what to do (exit code 2), never a traceback.
"""

from __future__ import annotations

import json
import os
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from protoseg.cli import main
from protoseg.outputs import MARKER, OutputOwnershipError

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
torch.set_num_threads(1)


def _user_folder(path: Path) -> Path:
    """A folder of the user's work: a dotfile, a document, another tool's run."""
    path.mkdir(parents=True)
    (path / ".git").write_text("the user's repository")
    (path / "thesis.docx").write_text("years of work")
    (path / "other-run").mkdir()
    return path


def _listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


def _one_line_error(capsys: Any) -> str:
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("protoseg: error: ") and err.count("protoseg: error:") == 1 and "Traceback" not in err
    return last


@pytest.fixture(scope="module")
def prediction(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished batch prediction (small, exact fake model)."""
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor
    from test_infer_fakes import CLASSES, SmoothModel, smooth_image

    out = tmp_path_factory.mktemp("pred") / "p.zarr"
    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)
    predict_slide_to_omezarr(p, ArraySlide(smooth_image(150, 200, seed=11), mpp=0.5), out, chunk=32, tissue_only=False)
    return out


# ==== item 1: --overwrite replaces only what protoseg wrote =================================================
@pytest.mark.parametrize(
    "argv",
    [
        ["synth", "dataset", "{out}", "--n-train", "1", "--n-val", "0", "--n-test", "0", "--size", "16"],
        ["bank", "build", "--out", "{out}", "--data", "{tmp}/nowhere"],
        ["pseudo", "--checkpoint", "{tmp}/nope.pt", "--data", "{tmp}/nowhere", "--out", "{out}"],
    ],
    ids=["synth-dataset", "bank-build", "pseudo"],
)
def test_overwrite_refuses_a_folder_holding_the_users_files(argv: list[str], tmp_path: Path, capsys: Any) -> None:
    user = _user_folder(tmp_path / "user")
    before = _listing(user)
    for extra in ([], ["--overwrite"]):
        args = [a.format(out=user, tmp=tmp_path) for a in argv] + extra
        assert main(args) == 2
        err = _one_line_error(capsys)
        assert f"{user / '.git'} (and 2 more), not written by protoseg" in err and "--overwrite" in err
        assert _listing(user) == before and (user / "thesis.docx").read_text() == "years of work"


def test_overwrite_replaces_another_protoseg_output_but_not_one_the_user_added_to(tmp_path: Path, capsys: Any) -> None:
    synth = ["synth", "dataset", "--n-train", "1", "--n-val", "0", "--n-test", "0", "--size", "16"]
    bank_like = tmp_path / "out"
    bank_like.mkdir()
    (bank_like / "features.npy").write_bytes(b"x")
    from protoseg.outputs import write_marker

    write_marker(bank_like, "image-bank")
    assert main([*synth, str(bank_like)]) == 2  # another kind of protoseg output: only when asked
    assert "holds a protoseg image-bank output" in _one_line_error(capsys)
    assert main([*synth, str(bank_like), "--overwrite"]) == 0
    assert (bank_like / "train").is_dir() and not (bank_like / "features.npy").exists()
    assert main([*synth, str(bank_like)]) == 0  # its own kind: replaced whole
    (bank_like / "notes.txt").write_text("added by the user")
    assert main([*synth, str(bank_like), "--overwrite"]) == 2
    assert f"{bank_like / 'notes.txt'}, not written by protoseg" in _one_line_error(capsys)
    assert (bank_like / "notes.txt").read_text() == "added by the user"


def test_predict_overwrite_never_deletes_the_users_files(prediction: Path, tmp_path: Path) -> None:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.errors import OutputError
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor
    from test_infer_fakes import CLASSES, SmoothModel, smooth_image

    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)
    slide = ArraySlide(smooth_image(40, 40, seed=1), mpp=0.5)
    user = _user_folder(tmp_path / "user.zarr")
    with pytest.raises(OutputError, match=r"user\.zarr/\.git \(and 2 more\), not written by protoseg"):
        predict_slide_to_omezarr(p, slide, user, chunk=32, overwrite=True)
    afile = tmp_path / "file.zarr"
    afile.write_text("the user's file")
    with pytest.raises(OutputError, match="is a file, not written by protoseg"):
        predict_slide_to_omezarr(p, slide, afile, chunk=32, overwrite=True)
    assert afile.read_text() == "the user's file" and (user / "thesis.docx").exists()
    ours = tmp_path / "ours.zarr"
    predict_slide_to_omezarr(p, slide, ours, chunk=32, tissue_only=False)
    (ours / "notes.txt").write_text("added by the user")
    with pytest.raises(OutputError, match="notes.txt, not written by protoseg"):
        predict_slide_to_omezarr(p, slide, ours, chunk=16, tissue_only=False, overwrite=True)
    assert (ours / "notes.txt").exists()
    (ours / "notes.txt").unlink()
    res = predict_slide_to_omezarr(p, slide, ours, chunk=16, tissue_only=False, overwrite=True)
    assert res.chunks_predicted > 0


def test_older_predictions_without_an_entry_list_are_still_replaced(prediction: Path, tmp_path: Path) -> None:
    import shutil

    from protoseg.export import export_prediction
    from protoseg.outputs import ZARR_MARKER_ATTR, read_marker

    old = tmp_path / "old.zarr"
    shutil.copytree(prediction, old)
    meta = json.loads((old / "zarr.json").read_text())
    marker = meta["attributes"].pop(ZARR_MARKER_ATTR)
    del marker["entries"]  # as the release before last wrote it: a marker file without an entry list
    (old / "zarr.json").write_text(json.dumps(meta))
    (old / MARKER).write_text(json.dumps(marker))
    assert export_prediction(prediction, "ome-zarr", old) == old  # adopted, then replaced
    assert read_marker(old)["entries"] and not (old / MARKER).exists()  # the marker is in zarr.json now


# ==== item 2: exports are recognised by protoseg's own marker ===============================================
@pytest.mark.parametrize(
    ("fmt", "text"),
    [
        ("geojson", '{"type": "FeatureCollection", "features": []}'),
        ("geojson", '{"features": []}'),
        ("areas", "class_index,class,pixels,area_mm2,tissue_fraction\n0,my class,1,2,3\n"),
        ("areas", "class_index,class,pixels,area_mm2,tissue_fraction,written_by\n0,a,1,2,0.5,me\n"),
    ],
)
def test_export_never_replaces_a_user_file_that_only_looks_like_one(
    prediction: Path, tmp_path: Path, fmt: str, text: str, capsys: Any
) -> None:
    user = tmp_path / ("mine.geojson" if fmt == "geojson" else "mine.csv")
    user.write_text(text)
    assert main(["export", str(prediction), "-f", fmt, "-o", str(user)]) == 2
    err = _one_line_error(capsys)
    assert str(user) in err and f"not a protoseg {fmt} export" in err and "--overwrite" in err
    assert user.read_text() == text


def test_export_never_replaces_a_tiff_that_only_mentions_the_mark(prediction: Path, tmp_path: Path) -> None:
    import tifffile

    from protoseg.export import ExportError, export_prediction

    user = tmp_path / "mine.ome.tif"
    tifffile.imwrite(user, np.zeros((8, 8), np.uint8), description="notes: a class-index mask I drew")
    before = user.read_bytes()
    with pytest.raises((OutputOwnershipError, ExportError), match="not a protoseg ome-tiff export"):
        export_prediction(prediction, "ome-tiff", user)
    assert user.read_bytes() == before


@pytest.mark.parametrize("fmt", ["geojson", "areas", "ome-tiff"])
def test_own_exports_carry_the_marker_and_are_replaced(prediction: Path, tmp_path: Path, fmt: str) -> None:
    from protoseg.export import export_prediction, read_area_csv

    out = export_prediction(prediction, fmt, tmp_path / f"own.{fmt}")
    if fmt == "geojson":
        doc = json.loads(out.read_text())
        assert doc["protoseg"]["kind"] == "geojson-export" and doc["protoseg"]["version"]
    elif fmt == "areas":
        assert all(line.endswith(",written_by") or ",protoseg " in line for line in out.read_text().splitlines())
        assert len(read_area_csv(out)) == 4  # the table reads back as before
    assert export_prediction(prediction, fmt, out) == out  # recognised: no --overwrite needed


# ==== item 3: a finished run is not trained over without --resume or --overwrite ============================
def test_cli_training_into_a_finished_run_is_refused_before_anything_is_written(tmp_path: Path, capsys: Any) -> None:
    stage = tmp_path / "run" / "stage1"
    stage.mkdir(parents=True)
    (stage / "best.pt").write_bytes(b"the best model of last week")
    (tmp_path / "run" / "stage1_config.yaml").write_text("the run's settings")
    argv = ["train", "stage1", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "run")]
    assert main(argv) == 2
    err = _one_line_error(capsys)
    assert str(stage) in err and "best.pt" in err and "--resume" in err and "--overwrite" in err
    assert (stage / "best.pt").read_bytes() == b"the best model of last week"
    assert (tmp_path / "run" / "stage1_config.yaml").read_text() == "the run's settings"
    with pytest.raises(SystemExit) as exc:  # resume it or replace it, not both
        main([*argv, "--resume", "--overwrite"])
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_training_again_needs_resume_or_overwrite(tmp_path: Path) -> None:
    from protoseg.train.engine import BEST, LAST
    from protoseg.train.errors import TrainingError
    from test_train_core import _trainer

    out = tmp_path / "stage2"
    first = _trainer(tmp_path).fit()
    assert first.last == out / LAST and (out / LAST).is_file()
    saved = {name: (out / name).read_bytes() for name in (LAST, BEST) if (out / name).exists()}
    with pytest.raises(TrainingError, match=rf"run folder {out} already holds last\.pt.*--resume.*--overwrite"):
        _trainer(tmp_path).fit()
    assert {name: (out / name).read_bytes() for name in saved} == saved  # untouched
    again = _trainer(tmp_path).fit(overwrite=True)
    assert again.epochs_done == 3 and not again.cancelled
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r.get("stage") == "stage2"] == [1, 2, 3] or not rows  # no rows twice
    assert _trainer(tmp_path).fit(resume=True).epochs_done == 3  # a finished run: nothing left to do


# ==== item 4: the metrics log is never appended through a link ==============================================
def test_training_refuses_a_metrics_log_linked_to_a_users_file(tmp_path: Path) -> None:
    from test_train_core import _trainer

    diary = tmp_path / "diary.jsonl"
    diary.write_text('{"mine": true}\n')
    out = tmp_path / "stage2"
    out.mkdir()
    (out / "metrics.jsonl").symlink_to(diary)
    with pytest.raises(OutputOwnershipError, match=r"stage2/metrics\.jsonl is a symbolic link.*remove it"):
        _trainer(tmp_path).fit()
    assert diary.read_text() == '{"mine": true}\n' and (out / "metrics.jsonl").is_symlink()
    assert not (out / "last.pt").exists()  # refused before the first epoch


# ==== item 5: outputs honour the umask ======================================================================
@pytest.fixture
def group_umask() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("fmt", ["geojson", "areas", "ome-tiff"])
def test_exports_are_readable_by_the_group(prediction: Path, tmp_path: Path, fmt: str, group_umask: None) -> None:
    out = tmp_path / f"shared.{fmt}"
    assert main(["export", str(prediction), "-f", fmt, "-o", str(out)]) == 0
    assert _mode(out) == 0o664


def test_predictions_and_their_copies_are_readable_by_the_group(tmp_path: Path, group_umask: None) -> None:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor
    from test_infer_fakes import CLASSES, SmoothModel, smooth_image

    pred = tmp_path / "p.zarr"
    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=32, overlap=8, batch_size=4)
    predict_slide_to_omezarr(p, ArraySlide(smooth_image(40, 40, seed=2), mpp=0.5), pred, chunk=32, tissue_only=False)
    copy = tmp_path / "copy.zarr"
    assert main(["export", str(pred), "-f", "ome-zarr", "-o", str(copy)]) == 0
    for folder in (pred, copy):
        assert _mode(folder) == 0o775 and _mode(folder / "zarr.json") == 0o664  # zarr.json holds the marker


def test_checkpoints_and_folders_are_readable_by_the_group(tmp_path: Path, group_umask: None) -> None:
    from protoseg.models.checkpoint import load_checkpoint, save_checkpoint
    from test_train_core import _trainer

    res = _trainer(tmp_path).fit()
    assert _mode(res.last) == 0o664 and _mode(tmp_path / "stage2" / "metrics.jsonl") == 0o664
    copy = save_checkpoint(load_checkpoint(res.last), tmp_path / "copy.pt")
    assert _mode(copy) == 0o664
    data = tmp_path / "synth"
    assert main(["synth", "dataset", str(data), "--n-train", "1", "--n-val", "0", "--n-test", "0", "--size", "16"]) == 0
    assert _mode(data) == 0o775 and _mode(data / MARKER) == 0o664
