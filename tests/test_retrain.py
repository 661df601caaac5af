"""Retrain from corrections: the corrected pixels move toward the correction, lineage is recorded, the
parent is untouched, cancel + resume, and the CLI round trip (store and GeoJSON inputs)."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import pytest

from protoseg.cancel import Cancelled, CancelToken
from protoseg.classes import BCSS_WSSS
from protoseg.train.events import EventKind, TrainEvent
from protoseg.train.retrain import RetrainSettings, checkpoint_lineage, file_sha256, retrain_from_corrections

logger = logging.getLogger(__name__)

#: The painted square (grid = level-0 pixels here: 1 µm/px slide, 1 µm/px model), class LYM (index 2).
BOX = (slice(32, 64), slice(32, 96))
LYM = 2
SETTINGS = RetrainSettings(epochs=4, lr=3e-2, batch_size=4, patch=32, replay=3.0, min_batches=4, device="cpu")


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    """A 128x128 slide with a violet block, a tiny random resnet18 stage-2 parent, corrections of the block."""
    import torch

    from protoseg.corrections import create_corrections, default_corrections_path
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.models.factory import build_model
    from protoseg.slide.writer import write_pyramidal_tiff
    from slide_fixtures import smooth_rgb

    root = tmp_path_factory.mktemp("retrain")
    torch.manual_seed(0)
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 4, "decoder_dim": 16}
    state = build_model(cfg).state_dict()
    ckpt = Checkpoint(stage=Stage.STAGE2, model_config=cfg, state_dict=state, classes=BCSS_WSSS, mpp=1.0, patch_size=32)
    parent = save_checkpoint(ckpt, root / "parent" / "model.pt")
    rgb = smooth_rgb(128, 128, 0)
    rgb[BOX] = (70, 40, 150)
    slide = root / "slide.tif"
    write_pyramidal_tiff(slide, rgb, 1.0, tile_size=64, compression=None)
    store = create_corrections(
        default_corrections_path(root, slide), slide=slide, shape=(128, 128), mpp=1.0, scale=1.0, classes=BCSS_WSSS
    )
    store.array[BOX] = LYM + 1
    return {"root": root, "parent": parent, "slide": slide, "store": store.path, "sha": file_sha256(parent)}


def _predict(checkpoint: Path, slide: Path) -> np.ndarray:
    from protoseg.infer.predictor import Predictor

    return Predictor(checkpoint, device="cpu").predict_region(slide, (0, 0, 128, 128)).mask


def _scores(checkpoint: Path, slide: Path) -> np.ndarray:
    from protoseg.infer.predictor import Predictor

    return Predictor(checkpoint, device="cpu").predict_region(slide, (0, 0, 128, 128)).probs


def test_retrain_learns_the_correction_and_records_lineage(setup: dict) -> None:
    before = _predict(setup["parent"], setup["slide"])
    events: list[TrainEvent] = []
    out = retrain_from_corrections(setup["parent"], [setup["store"]], setup["root"] / "r1", SETTINGS, [events.append])
    after = _predict(out, setup["slide"])
    inside = np.zeros(before.shape, bool)
    inside[BOX] = True
    frac_before, frac_after = float((before[inside] == LYM).mean()), float((after[inside] == LYM).mean())
    # replay (distillation to the parent's scores) keeps the rest of the slide closer to the parent than the
    # same number of steps without it (min_batches: 16 samples an epoch either way)
    forget = dataclasses.replace(SETTINGS, replay=0.0, min_batches=SETTINGS.min_batches)
    alone = retrain_from_corrections(setup["parent"], [setup["store"]], setup["root"] / "r0", forget)
    parent_p = _scores(setup["parent"], setup["slide"])[:, ~inside]
    drift = float(np.abs(_scores(out, setup["slide"])[:, ~inside] - parent_p).mean())
    drift_alone = float(np.abs(_scores(alone, setup["slide"])[:, ~inside] - parent_p).mean())
    logger.warning(
        "corrected pixels predicted LYM: %.3f before, %.3f after; score drift outside %.4f with replay, %.4f without",
        frac_before, frac_after, drift, drift_alone,
    )  # fmt: skip
    assert frac_after >= frac_before + 0.5 and drift < 0.9 * drift_alone
    assert out == setup["root"] / "r1" / "best.pt"
    assert file_sha256(setup["parent"]) == setup["sha"]  # the parent is untouched
    lineage = checkpoint_lineage(out)
    from protoseg.corrections import open_corrections

    assert lineage["parent_sha256"] == setup["sha"] and lineage["parent"] == str(setup["parent"].resolve())
    assert lineage["corrections_digests"] == [open_corrections(setup["store"], "r").digest()]
    assert lineage["settings"]["lr"] == SETTINGS.lr and lineage["patches"]["corrected"] == 2
    assert checkpoint_lineage(setup["parent"]) is None
    assert events[0].stage == "corrections" and events[0].kind is EventKind.START
    assert any(e.stage == "stage2" and e.kind is EventKind.STEP for e in events)
    from protoseg.train.errors import TrainingError

    with pytest.raises(TrainingError, match="--resume"):  # an earlier retrain there is never replaced silently
        retrain_from_corrections(setup["parent"], [setup["store"]], setup["root"] / "r1", SETTINGS)
    with pytest.raises(TrainingError, match="folder of the parent"):
        retrain_from_corrections(setup["parent"], [setup["store"]], setup["parent"].parent, SETTINGS)


def test_cancel_then_resume_finishes_the_retrain(setup: dict) -> None:
    token = CancelToken()
    settings = RetrainSettings(epochs=2, lr=3e-3, batch_size=4, patch=32, replay=0.0, device="cpu")

    def cancel_on_first_step(event: TrainEvent) -> None:
        if event.stage == "stage2" and event.kind is EventKind.STEP:
            token.cancel()

    out = setup["root"] / "r2"
    with pytest.raises(Cancelled, match="--resume"):
        retrain_from_corrections(setup["parent"], [setup["store"]], out, settings, [cancel_on_first_step], token)
    from protoseg.models.checkpoint import load_checkpoint

    assert load_checkpoint(out / "last.pt").epoch < settings.epochs  # stopped early, progress kept
    other = RetrainSettings(epochs=2, lr=1e-3, batch_size=4, patch=32, replay=0.0, device="cpu")
    from protoseg.train.errors import TrainingError

    with pytest.raises(TrainingError, match="settings"):
        retrain_from_corrections(setup["parent"], [setup["store"]], out, other, resume=True)
    path = retrain_from_corrections(setup["parent"], [setup["store"]], out, settings, resume=True)
    assert path == out / "best.pt" and checkpoint_lineage(path)["parent_sha256"] == setup["sha"]


def test_cli_retrain_and_export_round_trip(setup: dict, tmp_path: Path) -> None:
    from protoseg.cli import main

    geojson = tmp_path / "c.geojson"
    assert main(["export", "--corrections", str(setup["store"]), "-o", str(geojson)]) == 0
    names = {f["properties"]["classification"]["name"] for f in json.loads(geojson.read_text())["features"]}
    assert names == {"LYM"}
    args = ["train", "stage2", "--from", str(setup["parent"]), "--epochs", "1", "--patch-size", "32",
            "--batch-size", "4", "--lr", "1e-3", "--device", "cpu", "--replay", "0"]  # fmt: skip
    out = tmp_path / "cli"
    assert main([*args, "--corrections", str(geojson), "--slide", str(setup["slide"]), "--out", str(out)]) == 0
    lineage = checkpoint_lineage(out / "best.pt")
    from protoseg.corrections import open_corrections

    assert lineage["corrections_digests"] == [open_corrections(setup["store"], "r").digest()]  # same pixels
    assert main([*args, "--corrections", str(setup["store"]), "--out", str(out)]) == 2  # refused: earlier run
    assert main([*args, "--corrections", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "x")]) == 2


def test_reviewed_blocks_count_as_confirmed_and_few_patches_repeat(setup: dict, tmp_path: Path) -> None:
    """A reviewed block's unpainted pixels are trained on the parent's prediction (the user saw it and left
    it); painted pixels keep the painted class; pixels outside reviewed blocks stay ignored. Turning
    ``trust_reviewed`` off keeps only the painted pixels. Few patches fill ``min_batches`` steps per epoch."""
    from protoseg.cancel import CancelToken
    from protoseg.classes import IGNORE_INDEX
    from protoseg.corrections import create_corrections
    from protoseg.infer.predictor import Predictor
    from protoseg.infer.reader import open_any
    from protoseg.models.checkpoint import load_checkpoint
    from protoseg.train.correction_patches import CorrectionPatches, prepare_patches

    store = create_corrections(
        tmp_path / "s.corrections.zarr", slide=setup["slide"], shape=(128, 128), mpp=1.0, scale=1.0,
        classes=BCSS_WSSS, chunk=64,
    )  # fmt: skip
    store.write(0, 0, np.full((4, 4), LYM + 1, np.uint8))  # painted: top-left corner of block (0, 0)
    store.mark_reviewed(0, 0)
    parent = load_checkpoint(setup["parent"])
    predictor = Predictor(parent, device="cpu", tta=False)
    shown = np.argmax(predictor.predict_box(predictor.geometry(open_any(setup["slide"])), (0, 0, 32, 32)), axis=0)
    on = RetrainSettings(patch=32, replay=0.0, device="cpu")
    patches, n = prepare_patches([store], parent, 32, on, (), CancelToken())
    assert n == len(patches) == 4  # the 64 px reviewed block = four 32 px windows
    first = patches[0].target
    assert (first[:4, :4] == LYM).all()
    confirmed = np.ones((32, 32), bool)
    confirmed[:4, :4] = False
    assert (first[confirmed] == shown[confirmed]).all()
    off = RetrainSettings(patch=32, replay=0.0, device="cpu", trust_reviewed=False)
    patches, n = prepare_patches([store], parent, 32, off, (), CancelToken())
    assert n == 1 and (patches[0].target[:4, :4] == LYM).all() and (patches[0].target[confirmed] == IGNORE_INDEX).all()
    # a block marked with what the user was shown trains on that, not on the parent's current prediction
    store.mark_reviewed(0, 0, shown=np.full((64, 64), 1, np.uint8))
    patches, n = prepare_patches([store], parent, 32, on, (), CancelToken())
    assert n == 4 and (patches[0].target[:4, :4] == LYM).all() and (patches[0].target[confirmed] == 1).all()
    repeated = CorrectionPatches(patches, 4, min_len=40)
    assert len(repeated) == 40 and repeated[39]["mask"].shape == (32, 32)


def test_replay_is_shared_over_every_slide_and_rare_classes_weigh_more() -> None:
    """Replay windows come from every slide given in proportion to its free windows (an uncorrected slide
    included), never more than a slide has; class weights lift the rare labelled class, mean weight 1."""
    from protoseg.train.correction_patches import replay_shares
    from protoseg.train.retrain import balanced_class_weights

    assert replay_shares([10, 30, 0], 8) == [2, 6, 0]
    assert replay_shares([3, 1], 100) == [3, 1] and replay_shares([5, 5], 0) == [0, 0]
    assert sum(replay_shares([7, 11, 13], 9)) == 9
    w = balanced_class_weights(np.array([900, 100, 0, 0]), 0.5)
    assert w is not None and float(w[1]) == pytest.approx(3 * float(w[0]))
    assert float(w[0]) * 0.9 + float(w[1]) * 0.1 == pytest.approx(1.0)
    assert balanced_class_weights(np.array([5, 5, 0, 0]), 0.0) is None
    assert balanced_class_weights(np.zeros(4), 0.5) is None


def test_a_retrain_of_a_retrain_starts_from_the_lineage_root(setup: dict, tmp_path: Path) -> None:
    """The dock's job retrains the root of a chain on all corrections (no compounding drift); a root that is
    gone or changed leaves the checkpoint in use as the base."""
    import shutil

    from protoseg.cancel import CancelToken
    from protoseg.train.retrain import lineage_root, retrain_job

    settings = RetrainSettings(epochs=1, lr=1e-3, batch_size=4, patch=32, replay=0.0, min_batches=1, device="cpu")
    root = tmp_path / "root.pt"
    shutil.copyfile(setup["parent"], root)
    first = retrain_from_corrections(root, [setup["store"]], tmp_path / "a", settings)
    assert lineage_root(first) == root.resolve() and lineage_root(root) == root.resolve()
    second, _ = retrain_job(
        report=lambda e: None, cancel=CancelToken(), parent=str(first), corrections=[str(setup["store"])],
        out_dir=str(tmp_path / "b"), settings=settings,
    )  # fmt: skip
    assert checkpoint_lineage(second)["parent"] == str(root.resolve())
    root.write_bytes(root.read_bytes() + b"changed")  # the root is no longer the file the lineage names
    assert lineage_root(first) == first.resolve()
