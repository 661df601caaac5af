"""Benchmark: ``read_at_scale``'s non-integer shrink path vs PIL ``resize`` (BOX, BILINEAR) on the same pixels.

Pixels are real H&E (the 512 px tiles in ``../shared/data/tiles`` tiled into one RGB source) or synthetic
noise when that folder is absent. Every call reads a DISTINCT random region (random sub-pixel origin) at one
of the factors 1.3 / 1.7 / 2.5 / 3.3 for outputs of 224-1024 px; the contenders are interleaved region by
region in a shuffled order and the MEDIAN ms per call is reported per (size, factor) and overall, with the
ratio protoseg / PIL BOX (target <= 1.0). PIL gets a ready ``Image`` of the source (no conversion timed);
protoseg reads the same source through an in-memory slide whose ``read_level`` returns a view, so both
time the resampling only. ``--slide`` adds the whole ``read_at_scale`` on a real slide (decode included).

    python benchmarks/resample.py [--calls 24] [--slide ../shared/data/slides/cmu-1-small-region.svs]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.slide import open_slide, read_at_scale

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FACTORS = (1.3, 1.7, 2.5, 3.3)
BILINEAR = Image.Resampling.BILINEAR
SIZES = (224, 512, 1024)


def source(side: int) -> np.ndarray:
    """(side, side, 3) uint8: real tiles repeated (mirrored to avoid seams) or synthetic noise."""
    tiles = [np.asarray(Image.open(f).convert("RGB")) for f in sorted((DATA / "tiles").glob("*.png"))]
    if not tiles:
        return np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    n = -(-side // 512)
    rows = [np.concatenate([tiles[(i * n + j) % len(tiles)][:512, :512] for j in range(n)], axis=1) for i in range(n)]
    return np.ascontiguousarray(np.concatenate(rows, axis=0)[:side, :side])


class ArrayLevel:
    """One-level in-memory slide: ``read_level`` is a view, so only resampling is timed."""

    def __init__(self, img: np.ndarray) -> None:
        self.img = img
        self.level_count, self.level_downsamples, self.mpp = 1, (1.0,), None
        self.level_dimensions = ((img.shape[1], img.shape[0]),)

    def read_level(self, level: int, loc: tuple[int, int], size: tuple[int, int]) -> np.ndarray:
        (x, y), (w, h) = loc, size
        assert 0 <= x and 0 <= y and x + w <= self.img.shape[1] and y + h <= self.img.shape[0]
        return self.img[y : y + h, x : x + w]

    def read_region(self, location, level, size):
        return self.read_level(level, location, size)


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def kernels(calls: int, seed: int) -> None:
    side = int(max(SIZES) * max(FACTORS)) + 64
    img = source(side)
    pil, slide, rng = Image.fromarray(img), ArrayLevel(img), random.Random(seed)
    rows: dict[tuple[int, float], dict[str, list[float]]] = {}
    worst = 0
    for _ in range(calls):
        for size in SIZES:
            for f in FACTORS:
                span = size * f
                x, y = rng.uniform(1, side - span - 2), rng.uniform(1, side - span - 2)
                box = (x, y, x + span, y + span)
                fns = {
                    "protoseg": lambda r=(x, y, span, span), n=size: read_at_scale(slide, r, (n, n)),
                    "PIL BOX": lambda b=box, n=size: np.asarray(pil.resize((n, n), Image.Resampling.BOX, box=b)),
                    "PIL BILINEAR": lambda b=box, n=size: np.asarray(pil.resize((n, n), BILINEAR, box=b)),
                }
                order = list(fns)
                rng.shuffle(order)
                got = rows.setdefault((size, f), {k: [] for k in fns})
                for name in order:
                    got[name].append(timed(fns[name]))
                if size == SIZES[0]:  # sanity: same picture as PIL up to its whole-pixel box
                    a = read_at_scale(slide, (x, y, span, span), (size, size)).astype(int)
                    worst = max(worst, int(np.abs(a - np.asarray(pil.resize((size, size), 4, box=box))).mean()))
    print(f"{'size':>5} {'factor':>6} {'protoseg ms':>12} {'PIL BOX ms':>11} {'BILINEAR ms':>12} {'ratio':>6}")
    ratios = []
    for (size, f), got in rows.items():
        med = {k: statistics.median(v) for k, v in got.items()}
        ratios.append(med["protoseg"] / med["PIL BOX"])
        print(
            f"{size:5d} {f:6.1f} {med['protoseg']:12.2f} {med['PIL BOX']:11.2f} {med['PIL BILINEAR']:12.2f}"
            f" {ratios[-1]:6.2f}"
        )
    total = {k: sum(statistics.median(g[k]) for g in rows.values()) for k in ("protoseg", "PIL BOX")}
    print(
        f"median ratio protoseg / PIL BOX: {statistics.median(ratios):.2f}; "
        f"sum of medians ratio: {total['protoseg'] / total['PIL BOX']:.2f} (mean |diff| vs PIL BOX {worst})"
    )


def whole_read(path: Path, calls: int, seed: int) -> None:
    """``read_at_scale`` on a real slide (decode included): distinct random regions, 512 px at 1.7."""
    rng = random.Random(seed)
    times: list[float] = []
    with open_slide(path) as s:
        w0, h0 = s.dimensions
        for _ in range(calls):
            span = 512 * 1.7
            x, y = rng.uniform(0, w0 - span - 1), rng.uniform(0, h0 - span - 1)
            times.append(timed(lambda r=(x, y, span, span): read_at_scale(s, r, (512, 512))))
    med = statistics.median(times)
    print(f"whole read_at_scale on {path.name} (512 px at 1.7x, decode included): median {med:.1f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=24, help="regions per (size, factor)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--slide", type=Path, default=DATA / "slides" / "cmu-1-small-region.svs")
    args = ap.parse_args()
    kernels(args.calls, args.seed)
    if args.slide.exists():
        whole_read(args.slide, args.calls * 2, args.seed)


if __name__ == "__main__":
    main()
