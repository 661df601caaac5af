"""Rough edges of issue 24 item 6: a rebuilt checkpoint says it loads its weights (no "random init"), training
estimates its run time once after the first steps, an unknown patch mpp is reported once naming the option,
and progress written to a pipe is a log line per 10 % / minute, not one line per update."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.cli import progress
from protoseg.cli.progress import LoggedProgress, progress_bar
from protoseg.config import load_config
from protoseg.models.checkpoint import load_checkpoint
from protoseg.train import data_setup
from protoseg.train.estimate import RunTimeEstimate, format_duration
from protoseg.train.stage2 import Stage2Trainer

SIZE = 32
CLASSES = ClassSpec(names=("tumour", "stroma"))


class Patches(Dataset):
    """Eight in-memory stage-2 samples."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> dict[str, Any]:
        g = torch.Generator().manual_seed(i)
        mask = torch.randint(0, CLASSES.num_classes + 1, (SIZE, SIZE), generator=g)
        return {"image": torch.rand(3, SIZE, SIZE, generator=g), "mask": mask, "confidence": torch.ones(SIZE, SIZE)}


def _fit(out: Path) -> Path:
    cfg = load_config(
        None,
        [
            "stage2.backbone=test_convnext",
            "stage2.weights=null",
            "stage2.decoder_dim=8",
            "stage2.epochs=3",
            f"data.patch_size={SIZE}",
            "data.batch_size=4",
            f"run.out_dir={out}",
            "run.device=cpu",
            "run.amp=false",
            "run.log_every=1000",
        ],
    )
    return Stage2Trainer(cfg, Patches(), None, CLASSES).fit().last


def test_training_estimates_run_time_once_and_checkpoint_says_it_loads_weights(tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        last = _fit(tmp_path)
    notes = [r.getMessage() for r in caplog.records if "s/step" in r.getMessage()]
    assert len(notes) == 1 and "x 3 epochs x 2 steps: about" in notes[0] and "left" in notes[0]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="protoseg.models.backbone"):
        net = load_checkpoint(last).build_model()
    lines = [r.getMessage() for r in caplog.records if r.name == "protoseg.models.backbone"]
    assert lines == ["backbone test_convnext: weights from the stage2 checkpoint (epoch 3)"]
    assert not any("random init" in line for line in lines)
    assert net.backbone.weights_info.describe().endswith("weights from stage2 checkpoint (epoch 3)")


def test_estimate_is_epochs_times_steps_times_step_time():
    ticks = iter([10.0, 16.0])  # steps 2..4 take 6 s: 2 s per step
    est = RunTimeEstimate("stage1", epochs=8, steps_per_epoch=450, clock=lambda: next(ticks))
    lines = [est.after_step(s) for s in range(1, 10)]
    assert [i + 1 for i, line in enumerate(lines) if line] == [4]
    assert "2.00 s/step" in str(lines[3]) and "about 2 h 0 min in all, 1 h 59 min left" in str(lines[3])
    assert RunTimeEstimate("s", 1, 3).after_step(1) is None  # runs of a few steps say nothing
    assert (format_duration(40), format_duration(725), format_duration(7260)) == ("40 s", "12 min 5 s", "2 h 1 min")


def test_unknown_mpp_warned_once_naming_the_option(tmp_path, caplog, monkeypatch):
    (tmp_path / "A").mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 50, 50)).save(tmp_path / "A" / "a.png")
    monkeypatch.setattr(data_setup, "_MPP_WARNED", set())
    cfg = load_config(None, [f"data.root={tmp_path}"])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            data_setup.folder_data(cfg)
    warnings = [r.getMessage() for r in caplog.records if "mpp unknown" in r.getMessage()]
    assert len(warnings) == 1 and "--set run.mpp=" in warnings[0] and str(tmp_path) in warnings[0]
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert "--set run.mpp=" in readme  # documented where folder datasets are described


def test_piped_progress_logs_every_ten_percent_not_every_update(caplog, monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: False)
    now = [0.0]
    bar = LoggedProgress("stage1", total=1000, unit="step", clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="protoseg.cli.progress"):
        for _ in range(1000):
            now[0] += 0.01
            bar.update(1)
            bar.set_postfix({"loss": "0.5"})
        bar.close()
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == bar.lines == 10 and lines[-1].startswith("stage1: 1000/1000 (100%) step")
    slow = LoggedProgress("pseudo", clock=lambda: now[0])  # unknown total: a line per minute at most
    for _ in range(5):
        now[0] += 30.0
        slow.update(1)
    assert slow.lines == 2
    assert isinstance(progress_bar("x", total=3), LoggedProgress)
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    assert not isinstance(progress_bar("x", total=3, disable=True), LoggedProgress)


def test_piped_cli_progress_is_a_few_lines(tmp_path, caplog, capfd):
    from PIL import Image

    from protoseg.cli import main

    (tmp_path / "A").mkdir()
    for i in range(30):
        Image.new("RGB", (8, 8), (200, 50, 50 + i)).save(tmp_path / "A" / f"a{i}.png")
    with caplog.at_level(logging.INFO, logger="protoseg.cli.progress"):
        main(["data", "check", str(tmp_path)])
    lines = [r.getMessage() for r in caplog.records if r.name == "protoseg.cli.progress"]
    assert 1 <= len(lines) <= 11 and lines[-1].startswith("checking: 30/30 (100%) file")
    assert "\r" not in capfd.readouterr().err  # no redrawn bar in a pipe
