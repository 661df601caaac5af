"""Peak memory of ``predict`` (tissue thumbnail + batch pipeline) as the slide area grows 4x.

Run: ``python benchmarks/infer_memory.py [--size 1024]``: predicts multi-level and single-level JPEG
TIFFs of side S and 2S (each in a fresh subprocess, the tissue mask computed from the slide as
``predict`` does) and prints peak RSS (and peak RSS above the process baseline after loading the
model) with their ratios; target < 1.3x for 4x the area.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


class PeakRss:
    """Samples this process's RSS in a thread between ``with`` entry and exit; ``base``/``peak`` in bytes."""

    def __init__(self, every: float = 0.02) -> None:
        import psutil

        self._proc, self.every = psutil.Process(), every
        self.base = self.peak = self._proc.memory_info().rss

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(self.every)

    def __enter__(self) -> PeakRss:
        import threading

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def child(size: int, backbone: str, levels: int | None) -> None:
    import torch

    from infer_common import make_checkpoint, make_slide
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.predictor import Predictor

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp, size, levels=levels)  # built by the child: freed before the baseline is read
        predictor = Predictor(make_checkpoint(tmp, backbone), device="cpu", batch_size=8)
        predictor.predict_tiles(__import__("numpy").zeros((8, 224, 224, 3), "uint8"))
        import gc

        gc.collect()
        start = time.perf_counter()
        with PeakRss() as rss:
            res = predict_slide_to_omezarr(predictor, slide, tmp / "out.zarr", tissue_only=True)
        print(
            json.dumps(
                {
                    "size": size,
                    "tiles": res.tiles_predicted,
                    "seconds": time.perf_counter() - start,
                    "baseline_mb": rss.base / 2**20,
                    "peak_mb": rss.peak / 2**20,
                    "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            )
        )


def thumb_child(path: str, stream: bool) -> None:
    """Peak RSS of the tissue mask predict computes first (thumbnail of the whole slide)."""
    import protoseg.slide.resample as rs
    from protoseg.slide import open_slide, tissue_mask

    if not stream:
        rs.STREAM_BYTES = 1 << 62  # the previous behaviour: one window = the whole level
    start = time.perf_counter()
    with PeakRss(every=0.01) as rss, open_slide(path) as slide:
        tissue_mask(slide)
    print(
        json.dumps(
            {"seconds": time.perf_counter() - start, "baseline_mb": rss.base / 2**20, "peak_mb": rss.peak / 2**20}
        )
    )


def thumbnails(size: int) -> None:
    """Single-level JPEG TIFFs of side S and 2S (streamed to disk), tissue mask with and without streaming."""
    import numpy as np

    from infer_common import mosaic
    from protoseg.slide.writer import write_pyramidal_tiff_from_tiles

    block = mosaic(1024)

    def tile_fn(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        for yy in range(0, h):
            row = block[(y + yy) % 1024]
            out[yy] = np.take(row, (np.arange(x, x + w) % 1024), axis=0)
        return out

    with tempfile.TemporaryDirectory() as tmp:
        for side in (size, 2 * size):
            path = Path(tmp) / f"flat-{side}.tif"
            write_pyramidal_tiff_from_tiles(path, (side, side), tile_fn, mpp=0.5, n_levels=1, workdir=tmp)
            for stream in (False, True):
                out = subprocess.run(
                    [sys.executable, __file__, "--thumb-child", str(path), "--stream", str(int(stream))],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(out.stdout.strip().splitlines()[-1])
                label = "streamed (now)" if stream else "whole level (before)"
                print(
                    f"tissue thumbnail of a single-level {side}x{side} TIFF, {label}: peak "
                    f"+{r['peak_mb'] - r['baseline_mb']:.0f} MB above the process baseline, {r['seconds']:.1f} s"
                )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--levels", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--thumb-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stream", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--thumbnail-size", type=int, default=0, help="only the tissue-thumbnail part, slides of S and 2S")
    args = ap.parse_args()
    if args.thumb_child:
        thumb_child(args.thumb_child, bool(args.stream))
        return
    if args.thumbnail_size:
        thumbnails(args.thumbnail_size)
        return
    if args.child:
        child(args.child, args.backbone, args.levels or None)
        return
    for levels, label in ((0, "multi-level"), (1, "single-level")):
        rows = []
        for size in (args.size, 2 * args.size):
            out = subprocess.run(
                [sys.executable, __file__, "--child", str(size), "--backbone", args.backbone, "--levels", str(levels)],
                capture_output=True,
                text=True,
                check=True,
            )
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            print(
                f"{label} {size}x{size}: {r['tiles']} tiles in {r['seconds']:.1f} s, "
                f"baseline {r['baseline_mb']:.0f} MB, peak during prediction {r['peak_mb']:.0f} MB "
                f"(+{r['peak_mb'] - r['baseline_mb']:.0f} MB)"
            )
        a, b = rows
        print(f"{label}: peak RSS ratio for 4x area: {b['peak_mb'] / a['peak_mb']:.3f} (target < 1.3)")
        da, db = a["peak_mb"] - a["baseline_mb"], b["peak_mb"] - b["baseline_mb"]
        print(f"{label}: ratio of memory above baseline: {db / max(da, 1e-9):.3f} ({da:.0f} MB -> {db:.0f} MB)")


if __name__ == "__main__":
    main()
