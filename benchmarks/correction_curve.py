"""Correct-and-retrain curve on real H&E (WSSS4LUAD, pixel ground truth): a simulated user (not a test).

Start: a stage-2 checkpoint protoseg trained on pseudo-masks (``wsss_real.py``'s split and pipeline, CAM recipe,
tiles cut at the training patch size so the model sees native pixels; or ``--checkpoint``). Each whole PNG is a
"slide" (``protoseg.slide.open_slide``: no mpp, so a model without mpp predicts it on its native pixel grid, one
corrections store per image). The *val* images of the split are the pool the user corrects; the *test* images
are never corrected and give the held-out score (whole images predicted by ``Predictor``, tissue protocol:
ground-truth background excluded, as ``wsss_real.py`` reports).

Each round the user looks at one block (a square of a quarter of the image's shorter side; the stores' chunk,
so the store's ``reviewed`` grid is the review queue) picked

* ``queue``: the most uncertain not-yet-reviewed block over the pool (``margin_uncertainty`` of the current
  model's scores over each whole block, ``block_uncertainty``, ``next_review_block`` per image, highest first), or
* ``random``: a not-yet-reviewed block drawn at random (seeded), the control,

paints the ground truth where the current prediction is wrong inside it, marks it reviewed, and retrains
(``retrain_from_corrections`` on every pool image's store, painted or not, so replay comes from all of them;
``--parent root``: always from the start checkpoint on all corrections so far, as the Predict dock does;
``previous``: from the previous round's checkpoint).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/correction_curve.py --out /tmp/correction-curve
    .venv/bin/python benchmarks/correction_curve.py --quick --out /tmp/correction-curve-quick     # < 1 min
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protoseg.corrections import CorrectionStore, create_corrections, default_corrections_path
from protoseg.infer.predictor import Predictor
from protoseg.infer.uncertainty import block_uncertainty, margin_uncertainty, next_review_block
from protoseg.slide import open_slide
from protoseg.train.events import TrainEvent
from protoseg.train.pipeline import best_or_last, make_pseudo_masks, train_stage1
from protoseg.train.retrain import RetrainSettings, retrain_from_corrections
from wsss_real import (
    DEFAULT_DATA,
    RECIPES,
    add_training_args,
    score_maps,
    split_images,
    stage2_from,
    write_dataset,
)
from wsss_synthetic import base_config

logger = logging.getLogger("correction_curve")

PICKERS = ("queue", "random")
REPORT_AT = (0, 1, 2, 5, 10)


@dataclass
class Image_:
    """One real image as a slide: its path, ground truth and (pool images) its corrections store."""

    name: str
    path: Path
    mask: np.ndarray
    store: CorrectionStore | None = None
    block: int = 0


@dataclass
class Run:
    """One picker's chain of checkpoints."""

    picker: str
    ckpt: Path
    images: list[Image_]
    miou: dict[int, float] = field(default_factory=dict)
    retrains: list[dict[str, Any]] = field(default_factory=list)


def load_images(data: Path, names: list[str]) -> list[Image_]:
    return [
        Image_(n, (data / "img" / f"{n}.png").resolve(), np.asarray(Image.open(data / "mask" / f"{n}.png")))
        for n in names
    ]


def predict(ckpt: Path, images: list[Image_], device: str) -> list[np.ndarray]:
    """Scores (C+1, h, w) of whole images on the checkpoint's grid (native pixels: no mpp on either side)."""
    predictor = Predictor(ckpt, device=device, tta=False)
    out = []
    for im in images:
        geom = predictor.geometry(open_slide(im.path))
        out.append(predictor.predict_box(geom, (0, 0, geom.grid.width, geom.grid.height)))
    return out


def evaluate(ckpt: Path, images: list[Image_], device: str) -> float:
    preds = [np.argmax(s, axis=0).astype(np.uint8) for s in predict(ckpt, images, device)]
    return score_maps(preds, [im.mask for im in images])["mIoU"]


def open_stores(run_dir: Path, ckpt: Path, images: list[Image_], device: str) -> None:
    """One corrections store per pool image on the checkpoint's grid; chunk = the review block."""
    predictor = Predictor(ckpt, device=device, tta=False)
    for im in images:
        geom = predictor.geometry(open_slide(im.path))
        shape = (geom.grid.height, geom.grid.width)
        assert shape == im.mask.shape, f"{im.name}: grid {shape} vs mask {im.mask.shape}"
        im.block = max(16, round(min(shape) / 4))
        path = default_corrections_path(run_dir / "corrections", im.path)
        im.store = create_corrections(
            path, slide=im.path, shape=shape, mpp=geom.mpp, scale=geom.scale, classes=predictor.classes, chunk=im.block
        )


def pick(run: Run, rng: random.Random, device: str) -> tuple[Image_, int, int, np.ndarray] | None:
    """(image, row, col, its current prediction) of the block the user reviews next, or None when all are."""
    if run.picker == "random":
        left = [
            (im, r, c)
            for im in run.images
            for r, c in zip(*np.nonzero(np.asarray(im.store.reviewed[...]) == 0), strict=True)
        ]
        if not left:
            return None
        im, r, c = rng.choice(left)
        (scores,) = predict(run.ckpt, [im], device)
        return im, int(r), int(c), np.argmax(scores, axis=0)
    best: tuple[float, Image_, int, int, np.ndarray] | None = None
    for im, scores in zip(run.images, predict(run.ckpt, run.images, device), strict=True):
        u = block_uncertainty(margin_uncertainty(scores), im.block)
        rc = next_review_block(u, np.asarray(im.store.reviewed[...]))
        if rc is not None and (best is None or u[rc] > best[0]):
            best = (float(u[rc]), im, *rc, np.argmax(scores, axis=0))
    return None if best is None else best[1:]


def correct(im: Image_, r: int, c: int, pred: np.ndarray) -> int:
    """Paint the ground truth (store value class + 1, background C + 1) where ``pred`` is wrong in the block."""
    b = im.block
    gt = im.mask[r * b : (r + 1) * b, c * b : (c + 1) * b]
    wrong = pred[r * b : (r + 1) * b, c * b : (c + 1) * b] != gt
    im.store.write(r * b, c * b, np.where(wrong, gt + 1, 0).astype(np.uint8))
    im.store.mark_reviewed(r, c, shown=pred[r * b : (r + 1) * b, c * b : (c + 1) * b])
    return int(wrong.sum())


def retrain(run: Run, start: Path, out: Path, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    events: list[float] = []
    stores = [im.store.path for im in run.images]  # every slide the user has open: replay comes from all of them
    parent = run.ckpt if args.parent == "previous" else start
    settings = RetrainSettings(
        epochs=args.retrain_epochs,
        lr=args.retrain_lr,
        batch_size=args.batch,
        replay=args.replay,
        distill=args.distill,
        seed=seed,
        device=args.device,
    )
    t0 = time.perf_counter()

    def on_event(event: TrainEvent) -> None:
        events.append(time.perf_counter() - t0)

    ckpt = retrain_from_corrections(parent, stores, out, settings, callbacks=[on_event], overwrite=True)
    wall = time.perf_counter() - t0
    run.ckpt = ckpt
    return {"wall_s": wall, "first_event_s": events[0] if events else None, "events": len(events)}


def start_checkpoint(args: argparse.Namespace, seed: int) -> Path:
    """A stage-2 checkpoint trained on pseudo-masks (wsss_real's split and pipeline, CAM), or --checkpoint."""
    if args.checkpoint is not None:
        return args.checkpoint.resolve()
    data = args.out / f"seed{seed}" / "data"
    if not (data / "train" / "labels.csv").is_file():
        write_dataset(args.data, data, seed, args.size, args.min_share, args.max_tiles)
    cfg = base_config(args, data, seed, RECIPES["CAM"], args.out / f"seed{seed}" / "CAM")
    t0 = time.perf_counter()
    ckpt1 = best_or_last(train_stage1(cfg).last.parent)
    ckpt = stage2_from(cfg, ckpt1, make_pseudo_masks(cfg, ckpt1))
    print(f"seed {seed}: start checkpoint {ckpt} trained in {time.perf_counter() - t0:.0f} s", flush=True)
    return ckpt


def run_seed(args: argparse.Namespace, seed: int) -> dict[str, Any]:
    names = sorted(p.stem for p in (args.data / "img").glob("*.png"))
    splits = split_images(names, seed)
    pool_names, test_names = splits["val"][: args.pool], splits["test"][: args.test]
    start = start_checkpoint(args, seed)
    test = load_images(args.data, test_names)
    start_miou = evaluate(start, test, args.device)
    print(f"seed {seed}: start held-out mIoU {100 * start_miou:.1f} on {len(test)} test images", flush=True)
    out: dict[str, Any] = {"seed": seed, "start": str(start), "pool": pool_names, "test": test_names}
    for picker in args.pickers:
        run_dir = args.out / f"seed{seed}" / f"curve-{picker}"
        run = Run(picker, start, load_images(args.data, pool_names), {0: start_miou})
        open_stores(run_dir, start, run.images, args.device)
        rng = random.Random(seed)
        for k in range(1, args.rounds + 1):
            chosen = pick(run, rng, args.device)
            if chosen is None:
                break
            im, r, c, pred = chosen
            painted = correct(im, r, c, pred)
            if all(s.store.is_empty() for s in run.images):
                row = {"wall_s": 0.0, "first_event_s": None, "events": 0, "skipped": "nothing wrong yet"}
            else:
                row = retrain(run, start, run_dir / f"round{k:02d}", args, seed)
            row.update(round=k, image=im.name, block=[r, c], side=im.block, painted=painted)
            if k in REPORT_AT or k == args.rounds:
                run.miou[k] = evaluate(run.ckpt, test, args.device)
                row["miou"] = run.miou[k]
            run.retrains.append(row)
            first = "-" if row["first_event_s"] is None else f"{row['first_event_s']:.2f}"
            score = f", held-out mIoU {100 * row['miou']:.1f}" if "miou" in row else ""
            print(
                f"seed {seed} {picker} round {k}: {im.name} block ({r},{c}) of {im.block} px, {painted} px painted, "
                f"retrain {row['wall_s']:.1f} s (first event {first} s){score}",
                flush=True,
            )
        out[picker] = {"miou": run.miou, "retrains": run.retrains}
    return out


def _cell(values: list[float]) -> str:
    values = [100 * v for v in values]
    if not values:
        return "–"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def table(results: list[dict[str, Any]], pickers: list[str], rounds: int) -> str:
    at = [k for k in REPORT_AT if k <= rounds] + ([rounds] if rounds not in REPORT_AT else [])
    lines = [
        "| picker | " + " | ".join(f"{k} corr." for k in at) + " | retrain s (mean / max) | first event s (max) |",
        "|---" * (len(at) + 3) + "|",
    ]
    for picker in pickers:
        cells = [_cell([r[picker]["miou"][k] for r in results if k in r[picker]["miou"]]) for k in at]
        rows = [row for r in results for row in r[picker]["retrains"] if "skipped" not in row]
        walls = [row["wall_s"] for row in rows]
        firsts = [row["first_event_s"] for row in rows if row["first_event_s"] is not None]
        wall = f"{statistics.mean(walls):.1f} / {max(walls):.1f}" if walls else "–"
        lines.append(
            f"| {picker} | " + " | ".join(cells) + f" | {wall} | {max(firsts):.2f} |"
            if firsts
            else f"| {picker} | " + " | ".join(cells) + f" | {wall} | – |"
        )
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WSSS4LUAD folder (img/, mask/)")
    p.add_argument("--out", type=Path, default=Path("/tmp/protoseg-correction-curve"))
    p.add_argument("--quick", action="store_true", help="smoke size: 2 rounds, few images, 1 epoch, 64 px")
    p.add_argument("--checkpoint", type=Path, default=None, help="start from this stage-2 checkpoint (no mpp)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (split, random picker, retrain)")
    p.add_argument("--rounds", type=int, default=10, help="corrections (one block each) per picker")
    p.add_argument("--pickers", default=",".join(PICKERS), help="comma-separated subset of: queue, random")
    p.add_argument(
        "--parent",
        choices=("root", "previous"),
        default="root",
        help="what each retrain fine-tunes: the start checkpoint on all corrections (root, as the Predict dock "
        "does: lineage_root) or the previous round's checkpoint",
    )
    p.add_argument("--pool", type=int, default=None, help="pool (val) images the user corrects, at most")
    p.add_argument("--test", type=int, default=None, help="held-out (test) images, at most")
    p.add_argument("--size", type=int, default=128, help="tile = training patch side (px, native resolution)")
    p.add_argument("--max-tiles", type=int, default=240, help="tiles per split at most (0 = all)")
    p.add_argument("--retrain-epochs", type=int, default=3)
    p.add_argument("--retrain-lr", type=float, default=RetrainSettings().lr)
    p.add_argument("--replay", type=float, default=RetrainSettings().replay, help="replay patches per corrected one")
    p.add_argument("--distill", type=float, default=RetrainSettings().distill, help="weight of the replay's KL")
    add_training_args(p)
    p.set_defaults(epochs=2, epochs2=2)
    args = p.parse_args(argv)
    args.max_tiles = args.max_tiles or None
    if args.quick:
        args.rounds, args.pool, args.test, args.max_tiles = 2, 3, 3, 12
        args.size, args.epochs, args.epochs2, args.retrain_epochs, args.batch = 64, 1, 1, 1, 8
        args.warm_start_steps = 2
    args.pickers = [s.strip() for s in args.pickers.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("protoseg.infer.reader").setLevel(logging.ERROR)  # "model has no mpp": by design here
    if not (args.data / "img").is_dir() or not (args.data / "mask").is_dir():
        print(f"correction_curve: skipped: no WSSS4LUAD folder at {args.data.resolve()} (img/, mask/); pass --data")
        return 0
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    t0 = time.perf_counter()
    results = [run_seed(args, seed) for seed in seeds]
    print()
    print(
        f"WSSS4LUAD correction curve, seed(s) {args.seeds}, {args.rounds} rounds, parent = {args.parent}, "
        f"patch {args.size} px, {args.backbone} ({args.weights}), {args.epochs}+{args.epochs2} epochs, retrain "
        f"{args.retrain_epochs} epoch(s) at lr {args.retrain_lr:g}, {args.device} ({args.threads} thread(s)), "
        f"held-out mIoU % (tissue protocol), {(time.perf_counter() - t0) / 60:.1f} min"
    )
    print(table(results, args.pickers, args.rounds))
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "results": results}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
