"""Smoke test of benchmarks/wsss_real.py --quick on the real WSSS4LUAD set (skipped when the folder is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "real" / "wsss4luad"

pytestmark = pytest.mark.skipif(not (DATA / "img").is_dir(), reason=f"real WSSS4LUAD set absent ({DATA.resolve()})")


def test_quick_benchmark_prints_the_table_with_trivial_baselines(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "wsss_real.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "trivial: every pixel one class" in out and "trivial: each tile one of its labels" in out
    assert "| CAM |" in out and "tissue protocol" in out
    summary = json.loads((tmp_path / "results.json").read_text())
    row = summary["rows"]["CAM"][0]
    measured = {"pseudo_val", "pseudo_val_any", "free_val", "free_test", "stage2_test", "stage2_random_test"}
    assert measured | {"stage2_gated_val"} <= set(row)
    assert all(r["protocol"] == "tissue" for r in row.values() if isinstance(r, dict))
    assert row["stage1_epoch"] == 1 and row["stage1_selected_by"] == "label_free_mIoU"  # which best.pt, by what
    from protoseg.models.checkpoint import load_checkpoint

    stage1 = load_checkpoint(tmp_path / "seed0" / "CAM" / "stage1" / "last.pt")
    assert stage1.data_scale == 0.5  # the quick size trains the 128-px tiles at 64 px (data.scale)
    assert stage1.train_config["stage1"]["pseudo"]["scales"] == [1.0, 1.5]
    assert stage1.train_config["stage1"]["sampling"] == "balanced"  # the benchmark's class-balanced draws
    assert "balanced stage-1 sampling" in out
