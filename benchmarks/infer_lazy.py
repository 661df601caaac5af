"""Latency of lazy prediction chunks (what napari waits for) and the cost of an on-screen overlay.

Run: ``python benchmarks/infer_lazy.py [--view 1920x1080]``. Prints the median cold latency of
level-0 chunks, the cold latency of a neighbouring chunk (tiles shared through the cache), warm
latency; then the cost of the overlay of one view at level 0 (fresh caches each time): whole
chunks covering the view (512 and 256 px) and ``LazyPrediction.window`` (only the view's tiles),
the overlay scheduler itself (``ChunkScheduler.set_view`` of the view, ``wait_idle``), each against
predicting exactly that box (``Predictor.predict_box``), in time and in tiles (target: the scheduler
<= 1.1x the exact box). ``--ways scheduler --rounds 3 --skip-latency`` is a quicker run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_common import make_checkpoint, make_slide, threads
from protoseg.infer.lazy import LazyPrediction
from protoseg.infer.predictor import Predictor
from protoseg.napari.scheduler import ChunkScheduler
from protoseg.slide import open_slide


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def timed_cpu(fn) -> tuple[float, float]:
    """(wall, process CPU) seconds of ``fn()``; CPU time counts every thread (the scheduler's worker too) and is
    less disturbed than wall time by other processes on a shared machine."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def overlay_cost(predictor: Predictor, slide: Path, view: tuple[int, int], rounds: int, only: list[str]) -> None:
    """Overlay of one view: chunks covering it, or the window, vs predicting exactly that box (interleaved)."""
    vw, vh = view
    x0, y0 = 37, 23  # an arbitrary, unaligned viewport position
    box = (x0, y0, vw, vh)

    def exact() -> None:
        predictor.predict_box(predictor.geometry(open_slide(slide)), box)

    def chunks(c: int):
        def run() -> None:
            lazy = LazyPrediction(predictor, str(slide), chunk=c)
            lazy.read(0, y0, y0 + vh, x0, x0 + vw)

        return run

    def window() -> None:
        LazyPrediction(predictor, str(slide)).window(x0, y0, x0 + vw, y0 + vh)

    def scheduler(whole: bool):
        def run() -> None:
            sched = ChunkScheduler(LazyPrediction(predictor, str(slide)))  # the GUI's path: default 512 px chunks
            if whole:  # the scheduler before partial chunks: every chunk under the view computed whole
                sched.compute_all(sched.chunks_in(0, y0, y0 + vh, x0, x0 + vw))
            else:
                sched.set_view(0, y0, y0 + vh, x0, x0 + vw)
            if not sched.wait_idle(3600):
                raise RuntimeError("scheduler did not finish")
            sched.close()
            if sched.last_error:
                raise RuntimeError(sched.last_error)

        return run

    ways = {
        "exact box (predict_box)": exact,
        "chunks 512": chunks(512),
        "chunks 256": chunks(256),
        "window": window,
        "scheduler whole chunks": scheduler(True),
        "scheduler (set_view)": scheduler(False),
    }
    ways = {k: v for i, (k, v) in enumerate(ways.items()) if i == 0 or not only or any(o in k for o in only)}
    names = list(ways)
    secs: dict[str, list[tuple[float, float]]] = {k: [] for k in names}
    tiles: dict[str, int] = {}
    for r in range(rounds):
        for name in names[r % len(names) :] + names[: r % len(names)]:  # interleaved, order rotated each round
            before = predictor.tiles_predicted
            secs[name].append(timed_cpu(ways[name]))
            tiles[name] = predictor.tiles_predicted - before
    exact_name = names[0]
    base = [statistics.median(t[i] for t in secs[exact_name]) for i in (0, 1)]
    print(f"\non-screen overlay of a {vw}x{vh} view at level 0 (median of {rounds}, fresh caches, x = vs exact box):")
    for name, v in secs.items():
        wall, cpu = (statistics.median(t[i] for t in v) for i in (0, 1))
        print(
            f"  {name:24s} wall {wall:7.2f} s ({wall / base[0]:.2f}x)  cpu {cpu:7.2f} s ({cpu / base[1]:.2f}x)"
            f"  {tiles[name]:5d} tiles ({tiles[name] / tiles[exact_name]:.2f}x)"
        )


def latency(predictor: Predictor, slide: Path) -> None:
    """Cold, neighbour and warm latency of 256 px level-0 chunks read through dask."""
    lazy = LazyPrediction(predictor, str(slide), chunk=256)
    mask = lazy.mask(0)
    cold_first = timed(lambda: mask[0:256, 0:256].compute())
    cold_neighbour = timed(lambda: mask[0:256, 256:512].compute())
    warm = statistics.median(timed(lambda: mask[0:256, 0:256].compute()) for _ in range(20))
    warm_other = statistics.median(timed(lambda: lazy.probs(0)[1, 0:256, 256:512].compute()) for _ in range(20))
    print(f"chunk 256 px, tiles {predictor.tile_size} px overlap {predictor.overlap}")
    print(f"cold chunk            : {cold_first * 1e3:9.1f} ms")
    print(f"cold neighbour chunk  : {cold_neighbour * 1e3:9.1f} ms (shares tiles via the cache)")
    print(f"warm chunk (mask)     : {warm * 1e3:9.2f} ms")
    print(f"warm chunk (one class): {warm_other * 1e3:9.2f} ms")
    print(f"cold/warm ratio       : {cold_first / warm:9.0f}x; cache {lazy.cache.bytes / 2**20:.1f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--view", default="1920x1080", help="viewport W x H in prediction pixels")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--ways", default="", help="comma list of overlay ways to time besides the exact box (default all)")
    ap.add_argument("--skip-latency", action="store_true", help="only the overlay cost")
    args = ap.parse_args()
    only = [w for w in args.ways.split(",") if w]
    view = tuple(int(v) for v in args.view.lower().split("x"))
    torch.set_num_threads(threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp, 1536)
        predictor = Predictor(make_checkpoint(tmp, "resnet18"), device="cpu", batch_size=16)
        predictor.predict_tiles(__import__("numpy").zeros((2, 224, 224, 3), "uint8"))
        if not args.skip_latency:
            latency(predictor, slide)
        big = make_slide(tmp, max(view) + 256) if max(view) + 256 > 1536 else slide
        overlay_cost(predictor, big, view, args.rounds, only)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
