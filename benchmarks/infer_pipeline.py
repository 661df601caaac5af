"""Throughput of the batch pipeline (read -> model -> blend -> write OME-Zarr) vs the model alone.

Run: ``python benchmarks/infer_pipeline.py [--size 1536] [--backbone resnet18] [--writers 0,1] [--strips 4,auto]``.
Prints tiles/s of both on the same tiles and their ratio (target >= 0.9 on CPU): median of ``--repeats`` pipeline runs,
each against the model-only runs just before and after it. On CUDA it also prints tiles/s
with AMP and the decode-vs-compute time split.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_common import make_checkpoint, make_slide, threads
from protoseg.infer.batch import predict_slide_to_omezarr
from protoseg.infer.predictor import Predictor
from protoseg.slide import open_slide


def model_only(predictor: Predictor, tiles: np.ndarray, repeats: int = 1) -> float:
    predictor.predict_tiles(tiles[: predictor.batch_size])  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        predictor.predict_tiles(tiles)
    return repeats * len(tiles) / (time.perf_counter() - start)


def read_tiles(predictor: Predictor, slide_path: Path) -> tuple[np.ndarray, float]:
    slide = open_slide(slide_path)
    geom = predictor.geometry(slide)
    t = predictor.tile_size
    start = time.perf_counter()
    tiles = np.stack([geom.reader.read((*geom.grid.origin(i), t, t)) for i in np.ndindex(*geom.grid.shape)])
    return tiles, time.perf_counter() - start


def pipeline_run(
    predictor: Predictor,
    slide: Path,
    out: Path,
    grid_tiles: int,
    writers: int | None = None,
    strip: int | None = None,
) -> tuple[float, int, float]:
    """One whole-slide run into a new folder: (grid tiles/s, tiles predicted, seconds). Each grid tile counts
    once (tiles recomputed at strip borders are work, not output); the slide is opened afresh, so its
    decoded-tile cache starts empty."""
    before = predictor.tiles_predicted
    start = time.perf_counter()
    predict_slide_to_omezarr(predictor, slide, out, tissue_only=False, chunk=512, writers=writers, strip=strip)
    seconds = time.perf_counter() - start
    return grid_tiles / seconds, predictor.tiles_predicted - before, seconds


def _name(variant: tuple[int | None, int | None]) -> str:
    writers, strip = variant
    w = "default writers" if writers is None else f"writers={writers}"
    return f"{w}, strip auto" if strip is None else f"{w}, strip={strip}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size", type=int, default=1536, help="slide side in px (0.5 um/px)")
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=5, help="pipeline runs, each between two model-only runs")
    ap.add_argument(
        "--writers",
        default="",
        help="comma-separated blend+write thread counts to compare, interleaved (0 = in the model's thread); "
        "empty: the default for the device",
    )
    ap.add_argument(
        "--strips",
        default="",
        help="comma-separated plan strip widths in chunk columns to compare, interleaved (auto = the default, "
        "the widest within the memory budget); a slide wider than a strip predicts the tiles on its borders twice",
    )
    args = ap.parse_args()
    torch.set_num_threads(threads())
    import zarr  # noqa: F401 - imported once per process by any run; not part of a slide's throughput

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp, args.size)
        ckpt = make_checkpoint(tmp, args.backbone)
        predictor = Predictor(ckpt, device="cpu", batch_size=args.batch_size)
        tiles, read_s = read_tiles(predictor, slide)
        print(
            f"slide {args.size}x{args.size} px, {len(tiles)} tiles of {predictor.tile_size} px, "
            f"overlap {predictor.overlap}, backbone {args.backbone}, torch threads {torch.get_num_threads()}"
        )
        print(f"read+decode only : {len(tiles) / read_s:8.1f} tiles/s")
        # interleaved: model, pipeline, model, pipeline, ... model; each pipeline run against the mean of
        # the model-only runs either side of it (other load on the machine drifts); with several --writers
        # settings they take turns within each repeat
        writers = [int(v) for v in args.writers.split(",") if v.strip()] or [None]
        strips = [None if v.strip() == "auto" else int(v) for v in args.strips.split(",") if v.strip()] or [None]
        variants = [(w, st) for w in writers for st in strips]
        models = [model_only(predictor, tiles)]
        ratios: dict[tuple, list[float]] = {v: [] for v in variants}
        rates: dict[tuple, list[float]] = {v: [] for v in variants}
        seconds: dict[tuple, list[float]] = {v: [] for v in variants}
        for r in range(args.repeats):
            for v in variants:
                rate, n, sec = pipeline_run(predictor, slide, tmp / f"out-{r}-{v[0]}-{v[1]}.zarr", len(tiles), *v)
                models.append(model_only(predictor, tiles))
                ratios[v].append(rate / ((models[-2] + models[-1]) / 2))
                rates[v].append(rate)
                seconds[v].append(sec)
                if n != len(tiles):
                    print(
                        f"  run {r} ({_name(v)}): {n} tiles predicted for {len(tiles)} grid tiles "
                        "(strip borders recomputed, counted once)"
                    )
        print(f"model only       : {statistics.median(models):8.1f} tiles/s (median of {len(models)})")
        for v in variants:
            name = _name(v)
            spread = f"min {min(ratios[v]):.3f}, max {max(ratios[v]):.3f}, runs {args.repeats}"
            print(
                f"pipeline ({name}): {statistics.median(rates[v]):8.1f} tiles/s (median of {args.repeats}; "
                f"{statistics.median(seconds[v]):.2f} s a run, each grid tile counted once, pyramid included; "
                "weights hashed at model load)"
            )
            print(f"ratio pipeline/model-only ({name}): median {statistics.median(ratios[v]):.3f} ({spread}) (>= 0.9)")
            print(f"first run (cold caches of the process): ratio {ratios[v][0]:.3f}")
        if torch.cuda.is_available():
            gpu = Predictor(ckpt, device="cuda", batch_size=64, amp=True)
            rate = model_only(gpu, tiles, repeats=3)
            torch.cuda.synchronize()
            start = time.perf_counter()
            res = predict_slide_to_omezarr(gpu, slide, tmp / "gpu.zarr", tissue_only=False, chunk=512)
            gsec = time.perf_counter() - start
            print(f"CUDA AMP model only: {rate:.1f} tiles/s; pipeline {res.tiles_predicted / gsec:.1f} tiles/s")
            print(f"CUDA split: decode {read_s / len(tiles) * 1e3:.2f} ms/tile vs compute {1e3 / rate:.2f} ms/tile")
        else:
            print("CUDA not available: GPU throughput (AMP) and decode/compute split skipped")


if __name__ == "__main__":
    main()
