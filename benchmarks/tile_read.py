"""Benchmark: random native-tile reads from a gigapixel pyramidal JPEG TIFF.

Builds (in a temporary folder) a >= 50,000 x 50,000 px slide streamed from real H&E tiles
(mirrored/rotated per block), then reads the same random level-0 tiles and one whole low-resolution
level through (a) protoseg's dask pyramid (one chunk per compute, via the zarr store), (b) raw
``openslide.OpenSlide.read_region``, (c) napari-wsi's store when installed. Prints tiles/s, the
protoseg/openslide ratio (target >= 0.9) and "open + first chunk" latency (target < 0.5 s).

    python benchmarks/tile_read.py --size 50000 --n-tiles 500 [--keep] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

logger = logging.getLogger("tile_read")
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
BLOCK = 512


def load_sources(data: Path) -> list[np.ndarray]:
    """512x512 RGB H&E blocks: tissue tiles plus crops of the real slides."""
    from PIL import Image

    from protoseg.slide import open_slide

    blocks: list[np.ndarray] = []
    for f in sorted((data / "tiles").glob("*.png")):
        if "tissue-" in f.name and "no-tissue" not in f.name or "nuclei" in f.name:
            blocks.append(np.asarray(Image.open(f).convert("RGB"))[:BLOCK, :BLOCK])
    for name in ("cmu-1-small-region.svs", "target_image.png", "OS-1-detail.ome.tif"):
        p = data / "slides" / name
        if not p.exists():
            continue
        with open_slide(p) as s:
            w, h = s.dimensions
            for y in range(0, h - BLOCK + 1, BLOCK):
                for x in range(0, w - BLOCK + 1, BLOCK):
                    blocks.append(s.read_level(0, (x, y), (BLOCK, BLOCK)))
    if not blocks:
        raise SystemExit(f"no source tiles found under {data}; pass --data")
    return blocks


def make_tile_fn(blocks: list[np.ndarray], size: int, seed: int) -> Callable[[int, int, int, int], np.ndarray]:
    """tile_fn(x, y, w, h) of a mosaic whose 512-px blocks are random dihedral variants of sources."""
    nb = -(-size // BLOCK)
    rng = np.random.default_rng(seed)
    src = rng.integers(0, len(blocks), (nb, nb))
    var = rng.integers(0, 8, (nb, nb))

    def block(bi: int, bj: int) -> np.ndarray:
        b = np.rot90(blocks[src[bi, bj]], int(var[bi, bj]) % 4)
        return b[:, ::-1] if var[bi, bj] >= 4 else b

    def tile_fn(x: int, y: int, w: int, h: int) -> np.ndarray:
        out = np.empty((h, w, 3), np.uint8)
        for bi in range(y // BLOCK, (y + h - 1) // BLOCK + 1):
            for bj in range(x // BLOCK, (x + w - 1) // BLOCK + 1):
                y0, x0 = max(y, bi * BLOCK), max(x, bj * BLOCK)
                y1, x1 = min(y + h, (bi + 1) * BLOCK), min(x + w, (bj + 1) * BLOCK)
                out[y0 - y : y1 - y, x0 - x : x1 - x] = block(bi, bj)[
                    y0 - bi * BLOCK : y1 - bi * BLOCK, x0 - bj * BLOCK : x1 - bj * BLOCK
                ]
        return out

    return tile_fn


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _parallel(fn: Callable[[tuple[int, int]], object], boxes: list[tuple[int, int]], threads: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(fn, boxes))


def _chunk(arr, rc: tuple[int, int], ts: int):  # noqa: ANN001, ANN202 - dask array in, dask array out
    """The dask slice of one native tile, as napari requests it (slicing, not ``.blocks``)."""
    r, c = rc
    return arr[r * ts : (r + 1) * ts, c * ts : (c + 1) * ts]


def bench_protoseg(path: Path, boxes: list[tuple[int, int]], level: int, ts: int, threads: int) -> dict[str, float]:
    import dask

    from protoseg.slide import open_slide

    t0 = time.perf_counter()
    slide = open_slide(path)
    pyr = slide.dask_pyramid()
    _chunk(pyr[0], boxes[0], ts).compute(scheduler="synchronous")
    out = {"first": time.perf_counter() - t0}
    z = slide.level_array(0)
    out["tiles_zarr"] = _timed(lambda: [z[r * ts : (r + 1) * ts, c * ts : (c + 1) * ts] for r, c in boxes])
    out["tiles"] = _timed(lambda: [_chunk(pyr[0], rc, ts).compute(scheduler="synchronous") for rc in boxes])
    blocks = [_chunk(pyr[0], rc, ts) for rc in boxes]
    out["tiles_par"] = _timed(lambda: dask.compute(*blocks, scheduler="threads", num_workers=threads))
    out["level"] = _timed(lambda: pyr[level].compute(scheduler="threads", num_workers=threads))
    slide.close()
    return out


def bench_openslide(path: Path, boxes: list[tuple[int, int]], level: int, ts: int, threads: int) -> dict[str, float]:
    import openslide

    t0 = time.perf_counter()
    osr = openslide.OpenSlide(str(path))
    r, c = boxes[0]
    np.asarray(osr.read_region((c * ts, r * ts), 0, (ts, ts)))
    out = {"first": time.perf_counter() - t0}

    def read(rc: tuple[int, int]) -> object:
        return osr.read_region((rc[1] * ts, rc[0] * ts), 0, (ts, ts))

    out["tiles"] = _timed(lambda: [read(rc) for rc in boxes])
    out["tiles_np"] = _timed(lambda: [np.asarray(read(rc).convert("RGB")) for rc in boxes])
    out["tiles_par"] = _timed(lambda: _parallel(read, boxes, threads))
    out["level"] = _timed(lambda: osr.read_region((0, 0), level, osr.level_dimensions[level]))
    osr.close()
    return out


def bench_napari_wsi(path: Path, boxes: list[tuple[int, int]], level: int, ts: int, threads: int) -> dict[str, float] | None:
    try:
        from napari_wsi.backends.openslide import OpenSlideStore
    except ImportError:
        print("napari-wsi not installed")
        return None
    import dask

    t0 = time.perf_counter()
    store = OpenSlideStore(path)
    pyr = store.to_layer_data_tuples()[0][0]
    _chunk(pyr[0], boxes[0], ts).compute(scheduler="synchronous")
    out = {"first": time.perf_counter() - t0}
    z = store._pyramid[0][1]
    out["tiles_zarr"] = _timed(lambda: [z[r * ts : (r + 1) * ts, c * ts : (c + 1) * ts] for r, c in boxes])
    out["tiles"] = _timed(lambda: [_chunk(pyr[0], rc, ts).compute(scheduler="synchronous") for rc in boxes])
    blocks = [_chunk(pyr[0], rc, ts) for rc in boxes]
    out["tiles_par"] = _timed(lambda: dask.compute(*blocks, scheduler="threads", num_workers=threads))
    out["level"] = _timed(lambda: pyr[level].compute(scheduler="threads", num_workers=threads))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=50_000, help="level-0 width = height in pixels")
    ap.add_argument("--n-tiles", type=int, default=500, help="random level-0 tiles to read")
    ap.add_argument("--tile-size", type=int, default=256, help="native TIFF tile size")
    ap.add_argument("--rounds", type=int, default=2, help="repeat each reader; best round is reported")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help="threads for parallel reads")
    ap.add_argument("--keep", action="store_true", help="keep the generated slide and print its path")
    ap.add_argument("--workdir", type=Path, default=None, help="folder for the temporary slide")
    ap.add_argument("--data", type=Path, default=DATA, help="shared data folder (tiles/, slides/)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    from protoseg.slide.writer import write_pyramidal_tiff_from_tiles

    tmp = Path(tempfile.mkdtemp(prefix="protoseg-bench-", dir=args.workdir))
    path = tmp / f"mosaic-{args.size}.tif"
    try:
        blocks = load_sources(args.data)
        logger.info("building %s from %d source blocks", path, len(blocks))
        t0 = time.perf_counter()
        shapes = write_pyramidal_tiff_from_tiles(
            path, (args.size, args.size), make_tile_fn(blocks, args.size, args.seed), mpp=0.5,
            tile_size=args.tile_size, quality=90,
        )
        build = time.perf_counter() - t0
        print(f"built {args.size}x{args.size} px, {len(shapes)} levels, {path.stat().st_size / 1e9:.2f} GB "
              f"in {build:.0f} s")
        ts = args.tile_size
        grid = -(-args.size // ts)
        rng = np.random.default_rng(args.seed + 1)
        boxes = [(int(r), int(c)) for r, c in rng.integers(0, grid - 1, (args.n_tiles, 2))]  # full tiles
        level = next(i for i, (h, w) in enumerate(shapes) if max(h, w) <= 4096)
        lh, lw = shapes[level]
        results: dict[str, list[dict[str, float]]] = {"protoseg": [], "openslide": [], "napari-wsi": []}
        threads = args.threads
        for _ in range(args.rounds):
            results["openslide"].append(bench_openslide(path, boxes, level, ts, threads))
            results["protoseg"].append(bench_protoseg(path, boxes, level, ts, threads))
            nw = bench_napari_wsi(path, boxes, level, ts, threads)
            if nw is not None:
                results["napari-wsi"].append(nw)
        n = len(boxes)
        best = {k: {m: min(r[m] for r in v) for m in v[0]} for k, v in results.items() if v}
        print(f"\n{n} random {ts}x{ts} level-0 tiles, whole level {level} ({lw}x{lh}), best of {args.rounds}; "
              f"'seq' = one read at a time, 'par' = {threads} threads")
        print(f"{'reader':11s} {'seq tiles/s':>11s} {'zarr seq':>9s} {'par tiles/s':>11s} {'level s':>8s} {'open+1st s':>10s}")
        for k, b in best.items():
            zs = f"{n / b['tiles_zarr']:9.1f}" if "tiles_zarr" in b else f"{'-':>9s}"
            print(f"{k:11s} {n / b['tiles']:11.1f} {zs} {n / b['tiles_par']:11.1f} {b['level']:8.3f} {b['first']:10.3f}")
        o, p = best["openslide"], best["protoseg"]
        print(f"openslide read_region + RGB ndarray (seq): {n / o['tiles_np']:.1f} tiles/s")
        print(f"ratio protoseg/openslide tiles/s (target >= 0.9): dask chunk seq {o['tiles'] / p['tiles']:.3f}, "
              f"zarr chunk seq {o['tiles'] / p['tiles_zarr']:.3f} "
              f"(vs read_region+ndarray {o['tiles_np'] / p['tiles_zarr']:.3f}), "
              f"dask chunks parallel {o['tiles_par'] / p['tiles_par']:.3f}; whole level {o['level'] / p['level']:.3f}")
        print(f"protoseg open + first chunk: {p['first']:.3f} s (target < 0.5 s)")
        if "napari-wsi" in best:
            nw = best["napari-wsi"]
            print(f"ratio protoseg/napari-wsi tiles/s: dask seq {nw['tiles'] / p['tiles']:.3f}, "
                  f"zarr seq {nw['tiles_zarr'] / p['tiles_zarr']:.3f}, parallel {nw['tiles_par'] / p['tiles_par']:.3f}")
    finally:
        if args.keep:
            print(f"kept {path}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
