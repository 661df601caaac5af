"""Smoke test of benchmarks/correction_curve.py --quick on the real WSSS4LUAD set (skipped when it is absent)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data" / "real" / "wsss4luad"

pytestmark = pytest.mark.skipif(not (DATA / "img").is_dir(), reason=f"real WSSS4LUAD set absent ({DATA.resolve()})")


def test_quick_curve_prints_both_pickers_and_retrain_times(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "correction_curve.py"), "--quick", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| queue |" in done.stdout and "| random |" in done.stdout and "tissue protocol" in done.stdout
    (result,) = json.loads((tmp_path / "results.json").read_text())["results"]
    assert set(result["pool"]).isdisjoint(result["test"])  # never evaluated on a corrected image
    for picker in ("queue", "random"):
        rows = result[picker]["retrains"]
        assert [r["round"] for r in rows] == [1, 2]
        assert {"0", "1", "2"} <= set(result[picker]["miou"])
        for row in rows:
            if "skipped" not in row:
                assert row["wall_s"] > 0 and row["first_event_s"] is not None and row["events"] > 0
    stores = list((tmp_path / "seed0" / "curve-queue" / "corrections").glob("*.corrections.zarr"))
    assert len(stores) == 3  # one store per pool image
    from protoseg.train.retrain import checkpoint_lineage

    last = tmp_path / "seed0" / "curve-queue" / "round02" / "best.pt"
    if last.is_file():  # retrained in round 2 from the start checkpoint on all corrections (--parent root)
        assert checkpoint_lineage(last)["parent"] == str((tmp_path / "seed0" / "CAM" / "stage2" / "best.pt").resolve())
