"""End-to-end weakly supervised pipeline through the CLI on synthetic data: synth → bank → stage 1 →
pseudo → stage 2 → eval, plus resume, cancel, DDP on 2 CPU processes and clear CLI errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.cli import main
from protoseg.metrics import ConfusionMatrix
from protoseg.models.checkpoint import Stage, load_checkpoint

pytestmark = pytest.mark.slow

SIZE = 96
COMMON = [
    "--set",
    "model.backbone=resnet18",
    "--set",
    f"data.patch_size={SIZE}",
    "--set",
    "data.batch_size=8",
    "--set",
    f"bank.encoder.input_size={SIZE}",
    "--set",
    "run.device=cpu",
    "--set",
    "stage1.lr=1e-3",
    "--set",
    "model.weights=null",  # random init: tests never download ImageNet weights
    "--set",
    "stage1.warm_start=none",  # minutes of self-supervised steps (tests/test_warm_start.py)
    "--set",
    "stage2.weights=null",
]


def _json_line(text: str) -> dict:
    return json.loads([ln for ln in text.strip().splitlines() if ln.startswith("{")][-1])


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "data"
    assert (
        main(
            [
                "synth",
                "dataset",
                str(root),
                "--n-train",
                "64",
                "--n-val",
                "12",
                "--n-test",
                "12",
                "--size",
                str(SIZE),
                "--seed",
                "3",
            ]
        )
        == 0
    )
    return root


def _chance_miou(data: Path) -> float:
    """mIoU of uniformly random labels on the test masks (the bar 'well above chance' is measured against)."""
    from protoseg.classes import BCSS_WSSS
    from protoseg.data.masks import load_mask

    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(5, background_index=4)
    for p in sorted((data / "test" / "mask").glob("*.png")):
        mask = load_mask(p, BCSS_WSSS)
        cm.update(rng.integers(0, 5, size=mask.shape), mask)
    return cm.compute().miou


def test_full_pipeline_through_cli(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    bank = tmp_path / "bank"
    assert main(["bank", "build", "--data", str(dataset), "--out", str(bank), "--n", "10", *COMMON]) == 0
    info = _json_line(capsys.readouterr().out)
    assert info["encoder"].startswith("he-descriptor-v1") and info["members"] > 0
    assert main(["bank", "show", str(bank)]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["data_scale"] == info["data_scale"] == 1.0  # the folder patches' resampling (data.scale)

    assert (
        main(
            [
                "train",
                "stage1",
                "--data",
                str(dataset),
                "--out",
                str(run),
                "--recipe",
                "pbip",
                "--bank",
                str(bank),
                "--epochs",
                "4",
                *COMMON,
            ]
        )
        == 0
    )
    s1 = _json_line(capsys.readouterr().out)
    ckpt1 = Path(s1["best"])
    loaded = load_checkpoint(ckpt1)
    assert loaded.stage is Stage.STAGE1 and loaded.mpp == 0.5 and loaded.extra["recipe"] == "pbip"
    assert loaded.extra["bank_path"] == str(bank)

    assert (
        main(["pseudo", "--checkpoint", str(ckpt1), "--data", str(dataset), "--out", str(run / "pseudo"), *COMMON]) == 0
    )
    masks = sorted((run / "pseudo" / "mask").glob("*.png"))
    assert len(masks) == 64 and len(list((run / "pseudo" / "conf").glob("*.png"))) == 64
    marker = json.loads((run / "pseudo" / ".protoseg-output.json").read_text())
    assert marker["kind"] == "pseudo-masks" and len(marker["checkpoint_sha256"]) == 64

    assert (
        main(
            [
                "train",
                "stage2",
                "--data",
                str(dataset),
                "--out",
                str(run),
                "--epochs",
                "4",
                "--set",
                "stage2.backbone=resnet18",
                "--set",
                "stage2.lr=1e-3",
                *COMMON,
            ]
        )
        == 0
    )
    s2 = _json_line(capsys.readouterr().out)
    # no ImageNet weights (stage2.weights=null): stage 2 started from the encoder of the stage-1 checkpoint that
    # made the pseudo-masks, found beside them by its weights and recorded in the stage-2 checkpoint
    assert load_checkpoint(s2["best"]).extra["stage1"] == {"checkpoint": str(ckpt1)}
    assert main(["eval", "--checkpoint", s2["best"], "--data", str(dataset), "--json", *COMMON]) == 0
    metrics2 = _json_line(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt1), "--data", str(dataset), "--use-labels", "--json", *COMMON]) == 0
    metrics1 = _json_line(capsys.readouterr().out)
    assert main(["eval", "--checkpoint", str(ckpt1), "--data", str(dataset), "--json", *COMMON]) == 0
    free1 = _json_line(capsys.readouterr().out)  # label-free stage-1 prediction (the Predictor path)
    chance = _chance_miou(dataset)
    for key in ("mIoU", "FwIoU", "Dice", "bIoU", "IoU_TUM", "coverage"):
        assert key in metrics2
    assert metrics1["protocol"] == metrics2["protocol"] == free1["protocol"] == "pbip"
    print(
        f"chance {chance:.3f} pseudo-masks {metrics1['mIoU']:.3f} stage1 label-free {free1['mIoU']:.3f} "
        f"stage2 {metrics2['mIoU']:.3f}"
    )
    assert metrics1["mIoU"] > 2.0 * chance, (metrics1, chance)
    assert metrics2["mIoU"] > 1.8 * chance, (metrics2, chance)
    # issue 10 acceptance (same split, same protocol): pseudo-masks >= label-free prediction; stage 2 >=
    # its stage 1; no tissue class collapses in the pseudo-masks. The per-class ratio >= 0.8 (A3) is checked over
    # 3 seeds by benchmarks/wsss_synthetic.py (1.06-1.60 with joint CAM scaling); one 64-patch run here measured
    # 0.77 for TUM (joint) and above 0.8 with per-class scaling, so this guard is against collapse (< 0.5)
    assert metrics1["mIoU"] >= free1["mIoU"], (metrics1, free1)
    assert metrics2["mIoU"] >= free1["mIoU"], (metrics2, free1)
    for name in ("TUM", "STR", "LYM", "NEC"):
        assert metrics1.get(f"IoU_{name}", 0.0) >= 0.5 * free1.get(f"IoU_{name}", 0.0), (name, metrics1, free1)
    assert metrics1["coverage"] > 0.8  # uncertain pixels are ignored (255), but few (0.87 measured at this size)
    args = ["eval", "--checkpoint", s2["best"], "--data", str(dataset), "--json", "--protocol", "tissue", *COMMON]
    assert main(args) == 0
    tissue2 = _json_line(capsys.readouterr().out)
    assert tissue2["protocol"] == "tissue" and "IoU_background" not in tissue2


def test_resume_continues_from_checkpoint(dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    args = [
        "train",
        "stage1",
        "--data",
        str(dataset),
        "--out",
        str(run),
        "--recipe",
        "cam",
        *COMMON,
        "--set",
        "data.max_val=4",
    ]
    assert main([*args, "--epochs", "1"]) == 0
    first = load_checkpoint(run / "stage1" / "last.pt")
    steps_per_epoch = first.step
    assert first.epoch == 1 and steps_per_epoch == 64 // 8
    assert main([*args, "--epochs", "2", "--resume"]) == 0
    second = load_checkpoint(run / "stage1" / "last.pt")
    assert second.epoch == 2 and second.step == 2 * steps_per_epoch
    assert any(not torch.equal(first.state_dict[k], second.state_dict[k]) for k in first.state_dict)
    epochs = [json.loads(ln)["epoch"] for ln in (run / "stage1" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]  # the resumed run did only epoch 2
    assert "optimizer" in second.extra


def test_cancel_leaves_usable_checkpoint(dataset: Path, tmp_path: Path) -> None:
    from protoseg.cancel import CancelToken
    from protoseg.config import load_config
    from protoseg.train.events import EventKind
    from protoseg.train.pipeline import train_stage1

    cfg = load_config(
        None,
        [c for c in COMMON if c != "--set"]
        + [
            f"data.root={dataset}",
            f"run.out_dir={tmp_path / 'run'}",
            "stage1.recipe=cam",
            "stage1.epochs=5",
            "data.max_val=4",
        ],
    )
    token = CancelToken()
    seen: list[EventKind] = []

    def on_event(ev) -> None:
        seen.append(ev.kind)
        if ev.kind is EventKind.STEP and ev.epoch == 1 and ev.step == 10:
            token.cancel()  # during the second epoch

    result = train_stage1(cfg, [on_event], cancel=token)
    assert result.cancelled and result.epochs_done == 1
    assert EventKind.CANCELLED in seen and seen[-1] is EventKind.END
    ckpt = load_checkpoint(result.last)
    assert ckpt.epoch == 1
    model = ckpt.build_model()
    assert model.predict(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 5, SIZE, SIZE)


def test_cli_errors_are_one_clear_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.png").write_bytes(b"")
    assert main(["train", "stage1", "--data", str(tmp_path / "flat"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "protoseg: error:" in err and "train" in err
    assert main(["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(tmp_path)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "stage1", "--set", "stage1.epochz=1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_help_for_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    for cmd in (
        ["synth", "dataset"],
        ["bank", "build"],
        ["bank", "show"],
        ["train", "stage1"],
        ["train", "stage2"],
        ["pseudo"],
        ["eval"],
    ):
        with pytest.raises(SystemExit) as exc:
            main([*cmd, "--help"])
        assert exc.value.code == 0
    assert "--recipe" in capsys.readouterr().out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_cpu_processes_on_gloo(dataset: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_ADDR": "127.0.0.1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        "-m",
        "protoseg",
        "train",
        "stage1",
        "--data",
        str(dataset),
        "--out",
        str(run),
        "--recipe",
        "lpd",
        "--epochs",
        "1",
        *COMMON,
        "--set",
        "data.max_val=4",
        "--set",  # rank 0 trains the warm start, rank 1 waits for it and reads it
        "stage1.warm_start=simclr",
        "--set",
        "stage1.warm_start_steps=2",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = load_checkpoint(run / "stage1" / "last.pt")
    # each of the 2 ranks sees half of the 64 patches: 32 / batch 8 = 4 optimiser steps per epoch
    assert ckpt.step == 4 and ckpt.epoch == 1
    assert not any(k.startswith("module.") for k in ckpt.state_dict)
    assert (run / "warm_start" / "backbone.pt").is_file() and "warm_start/backbone.pt" in ckpt.train_config["model"][
        "weights"
    ]
