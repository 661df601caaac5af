"""Self-supervised warm start of the stage-1 backbone (issue 24, ``stage1.warm_start=simclr``): SimCLR's loss,
weights that differ from random init and load into stage 1, reuse only for the same patches and settings,
skipped for pretrained weights, cancellable, and through ``train_stage1`` and the CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.cancel import Cancelled, CancelToken
from protoseg.config import ConfigError, WarmStart, load_config
from protoseg.models.backbone import build_backbone
from protoseg.outputs import read_marker
from protoseg.train import warm_start as ws
from protoseg.train.data_setup import folder_data
from protoseg.train.pipeline import train_stage1
from tiny_models import TINY_CPU_RUN


def _folder(root: Path, n: int = 6, size: int = 32) -> Path:
    """Generic layout with ``n`` labelled training patches."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True)
    (root / "classes.yaml").write_text("names: [TE, NOR]\n")
    rows = ["path,TE,NOR"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(root / "train" / f"p{i}.png")
        rows.append(f"p{i}.png,{int(i % 2 == 0)},{int(i % 2 == 1)}")
    (root / "train" / "labels.csv").write_text("\n".join(rows) + "\n")
    return root


def _cfg(root: Path, out: Path, *extra: str):
    return load_config(
        None,
        [
            f"data.root={root}",
            "data.batch_size=2",
            *TINY_CPU_RUN,
            "stage1.epochs=1",
            "stage1.warm_start=simclr",
            "stage1.warm_start_steps=2",
            "stage1.warm_start_batch=3",
            f"run.out_dir={out}",
            *extra,
        ],
    )


def test_nt_xent_rewards_matching_views() -> None:
    z = torch.eye(4, 8)  # four patches, orthogonal
    matched = ws.nt_xent(torch.cat([z, z]))
    shuffled = ws.nt_xent(torch.cat([z, z[[1, 2, 3, 0]]]))
    # matched: the positive at cosine 1, six negatives at 0; shuffled: the positive and five negatives at 0, one at 1
    assert float(matched) == pytest.approx(np.log(1 + 6 * np.exp(-1 / ws.TEMPERATURE)), rel=1e-5)
    assert float(shuffled) == pytest.approx(np.log(np.exp(1 / ws.TEMPERATURE) + 6), rel=1e-5)
    x = torch.randn(6, 5, requires_grad=True)
    ws.nt_xent(x).backward()
    assert x.grad is not None and bool(torch.isfinite(x.grad).all())


def test_wanted_only_without_pretrained_weights(tmp_path: Path) -> None:
    root = _folder(tmp_path / "d")
    assert ws.wanted(_cfg(root, tmp_path / "o"))
    assert not ws.wanted(_cfg(root, tmp_path / "o", "stage1.warm_start=none"))
    weights = tmp_path / "w.pt"
    torch.save(build_backbone("resnet18", None).model.state_dict(), weights)
    assert not ws.wanted(_cfg(root, tmp_path / "o", f"model.weights={weights}"))  # a local file is pretrained
    with pytest.raises(ConfigError, match="stage1.warm_start_batch"):
        _cfg(root, tmp_path / "o", "stage1.warm_start_batch=1")
    with pytest.raises(ConfigError, match="stage1.warm_start: 'byol' is not one of"):
        _cfg(root, tmp_path / "o", "stage1.warm_start=byol")


def test_weights_are_trained_written_atomically_and_reused_only_for_the_same_inputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    cfg = _cfg(root, out)
    train = folder_data(cfg).train
    path = ws.warm_start_weights(cfg, train)
    assert path == out / "warm_start" / ws.WEIGHTS_FILE
    assert read_marker(path.parent)["kind"] == ws.KIND
    record = json.loads((path.parent / ws.RECORD_FILE).read_text())
    assert record["steps"] == 2 and record["batch"] == 3 and record["view"] == 32 and record["backbone"] == "resnet18"
    state = torch.load(path, weights_only=True)
    torch.manual_seed(cfg.run.seed)  # the warm start's own initial weights
    fresh = build_backbone("resnet18", None).model.state_dict()
    assert state.keys() == fresh.keys()
    assert not torch.equal(state["conv1.weight"], fresh["conv1.weight"])  # trained, not the random init

    def no_training(*args, **kwargs):
        raise AssertionError("the warm start was trained again")

    monkeypatch.setattr(ws, "train_warm_start", no_training)
    assert ws.warm_start_weights(cfg, train) == path  # same patches and settings: reused
    with pytest.raises(AssertionError, match="trained again"):
        ws.warm_start_weights(_cfg(root, out, "stage1.warm_start_steps=3"), train)
    (root / "train" / "p5.png").rename(root / "train" / "q5.png")
    (root / "train" / "labels.csv").write_text((root / "train" / "labels.csv").read_text().replace("p5", "q5"))
    with pytest.raises(AssertionError, match="trained again"):  # other patches
        ws.warm_start_weights(cfg, folder_data(cfg).train)


def test_cancel_stops_before_anything_is_written(tmp_path: Path) -> None:
    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    cfg = _cfg(root, out)
    token = CancelToken()
    token.cancel()
    with pytest.raises(Cancelled, match="warm start"):
        ws.warm_start_weights(cfg, folder_data(cfg).train, token)
    assert not (out / "warm_start").exists()
    events, token = [], CancelToken()

    def cancel_after_first_step(event) -> None:  # the user presses Cancel during the warm start
        events.append(event)
        if event.stage == ws.STAGE and event.kind.value == "step":
            token.cancel()

    result = train_stage1(cfg, callbacks=[cancel_after_first_step], cancel=token)  # a cancelled run, not an error
    assert result.cancelled and result.steps_done == 0 and not result.last.exists()
    assert [(e.kind.value, e.stage) for e in events][-1] == ("cancelled", ws.STAGE)
    assert not (out / "warm_start").exists() and not (out / "stage1" / "last.pt").exists()


def test_stage1_starts_from_the_warm_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from protoseg.models.checkpoint import load_checkpoint

    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    cfg = _cfg(root, out)
    assert cfg.stage1.warm_start is WarmStart.SIMCLR
    with caplog.at_level(logging.INFO, logger="protoseg"):
        ckpt = load_checkpoint(train_stage1(cfg).last)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "warm start: 2 self-supervised steps" in said and "has no pretrained weights" in said
    assert f"tensors from {out / 'warm_start' / ws.WEIGHTS_FILE} (0 missing" in said  # stage 1's backbone
    assert ckpt.model_config["weights"] is None  # the checkpoint carries its weights, not the file's path
    saved = (out / "stage1_config.yaml").read_text()
    assert "warm_start/backbone.pt" in saved and "warm_start: simclr" in saved


def test_cli_runs_the_warm_start(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from protoseg.cli import main

    root, out = _folder(tmp_path / "d"), tmp_path / "run"
    common = ["--set", "model.backbone=resnet18", "--set", "model.weights=null", "--set", "data.num_workers=0"]
    warm = ["--warm-start", "simclr", "--set", "stage1.warm_start_steps=1"]
    argv = ["train", "stage1", "--data", str(root), "--out", str(out), "--recipe", "cam", "--epochs", "1"]
    with caplog.at_level(logging.INFO, logger="protoseg"):
        assert main([*argv, *common, *warm]) == 0
    assert (out / "warm_start" / ws.WEIGHTS_FILE).is_file() and (out / "stage1" / "last.pt").is_file()
