"""Weakly supervised segmentation on real H&E (WSSS4LUAD, pixel ground truth) over several seeds (not a test).

The real counterpart of ``wsss_synthetic.py`` (same recipe loop, the library's pipeline and metrics): per
seed the 67 regions are split by image into train / val / test (NOR is in 3 images only: 68 always trains,
01 validates, 03 tests), cut into tiles (white padding = background) written as a generic-layout folder
under ``--out`` (never in the repository), with each training tile's image-level labels taken from its mask
(a class present on >= ``--min-share`` of the tile). Per recipe: stage 1 -> label-gated pseudo-masks and
label-free prediction (val) -> pseudo-mask export -> stage 2 -> label-free (test); tissue protocol
(ground-truth background excluded), per-class IoU, and in the same table the trivial baselines: every
tissue pixel one class (the best class, with hindsight) and each tile filled with one of its labels (the
best fixed class priority, with hindsight). Label-free stage 1 uses the class gate calibrated on val during
training and scores the kept classes' CAMs on one joint scale (``stage1.label_free_cams=joint``), as the
pseudo-masks do (``stage1.pseudo.cams=joint``); the "per-class CAMs" columns evaluate the same checkpoint with
each class's CAM min-max scaled (PBIP's rule, protoseg's before).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/wsss_real.py --no-stage2-random --out /tmp/wsss-real   # ~30 min
    .venv/bin/python benchmarks/wsss_real.py --quick --out /tmp/wsss-real-quick               # < 1 min
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from protoseg.data.records import Split
from protoseg.data.resample import rescale_mask
from protoseg.metrics import ConfusionMatrix, Protocol, apply_protocol
from protoseg.models.checkpoint import load_checkpoint, save_checkpoint
from protoseg.train.evaluation import flat_metrics
from protoseg.train.pipeline import (
    best_or_last,
    evaluate_checkpoint,
    make_pseudo_masks,
    train_stage1,
    train_stage2,
)
from wsss_synthetic import add_common_args, base_config, mean_sd

logger = logging.getLogger("wsss_real")

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real" / "wsss4luad"
CLASSES = ("TE", "TAS", "NOR")
COLOURS = ([205, 51, 51], [255, 165, 0], [0, 255, 0])
BACKGROUND = 3
#: Images holding NOR (README): one per split so every split has it.
NOR_SPLIT = {"68": "train", "01": "val", "03": "test"}
RECIPES: dict[str, list[str]] = {
    "CAM": ["stage1.recipe=cam"],
    "PBIP": ["stage1.recipe=pbip"],
    "LPD": ["stage1.recipe=lpd"],
}


def split_images(names: list[str], seed: int, fractions: tuple[float, float] = (0.6, 0.2)) -> dict[str, list[str]]:
    """Image ids per split (train/val/test), shuffled by ``seed``; the NOR images pinned by ``NOR_SPLIT``."""
    rest = [n for n in names if n not in NOR_SPLIT]
    random.Random(seed).shuffle(rest)
    n_train, n_val = round(fractions[0] * len(rest)), round(fractions[1] * len(rest))
    out = {"train": rest[:n_train], "val": rest[n_train : n_train + n_val], "test": rest[n_train + n_val :]}
    for name, split in NOR_SPLIT.items():
        if name in names:
            out[split].append(name)
    return out


def tiles(image: np.ndarray, mask: np.ndarray, size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Non-overlapping ``size`` tiles covering the image, padded white / background; all-background skipped."""
    h, w = mask.shape
    H, W = -(-h // size) * size, -(-w // size) * size
    img = np.full((H, W, 3), 255, np.uint8)
    msk = np.full((H, W), BACKGROUND, np.uint8)
    img[:h, :w], msk[:h, :w] = image, mask
    out = []
    for y in range(0, H, size):
        for x in range(0, W, size):
            m = msk[y : y + size, x : x + size]
            if (m != BACKGROUND).any():
                out.append((img[y : y + size, x : x + size], m))
    return out


def write_dataset(src: Path, dst: Path, seed: int, size: int, min_share: float, limit: int | None) -> Path:
    """Generic-layout folder of tiles at ``dst`` (train: labels.csv; val/test: img + mask) for one seed.

    ``limit`` keeps at most that many tiles per split, drawn uniformly (seeded) from all of the split's
    images, so every image keeps its share (a first-come cut used to drop the NOR image listed last)."""
    names = sorted(p.stem for p in (src / "img").glob("*.png"))
    splits = split_images(names, seed)
    (dst / "train").mkdir(parents=True, exist_ok=True)
    (dst / "classes.yaml").write_text(f"names: {list(CLASSES)}\ncolors: {list(COLOURS)}\n")
    rows = ["path," + ",".join(CLASSES)]
    for split, ids in splits.items():
        cut: list[tuple[str, np.ndarray, np.ndarray]] = []
        for name in ids:
            image = np.asarray(Image.open(src / "img" / f"{name}.png").convert("RGB"))
            mask = np.asarray(Image.open(src / "mask" / f"{name}.png"))
            for i, (t_img, t_mask) in enumerate(tiles(image, mask, size)):
                share = [(t_mask == c).mean() for c in range(len(CLASSES))]
                if split == "train" and not any(s >= min_share for s in share):
                    continue
                cut.append((f"{name}_{i:03d}", t_img, t_mask))
        if limit is not None and len(cut) > limit:
            keep = sorted(random.Random(f"{seed}-{split}").sample(range(len(cut)), limit))
            cut = [cut[i] for i in keep]
        for stem, t_img, t_mask in cut:
            if split == "train":
                label = [int((t_mask == c).mean() >= min_share) for c in range(len(CLASSES))]
                Image.fromarray(t_img).save(dst / "train" / f"{stem}.png")
                rows.append(f"{stem}.png," + ",".join(map(str, label)))
            else:
                for kind, arr in (("img", t_img), ("mask", t_mask)):
                    (dst / split / kind).mkdir(parents=True, exist_ok=True)
                    Image.fromarray(arr).save(dst / split / kind / f"{stem}.png")
    (dst / "train" / "labels.csv").write_text("\n".join(rows) + "\n")
    return dst


def _split_masks(data: Path, split: str, scale: float = 1.0) -> list[np.ndarray]:
    """A split's masks as the models are scored on them (resampled by ``data.scale``, nearest)."""
    return [rescale_mask(np.asarray(Image.open(p)), scale) for p in sorted((data / split / "mask").glob("*.png"))]


def shared(args: argparse.Namespace) -> list[str]:
    """Overrides of every run: the patch resampling (``data.scale``), the pseudo-mask input scales and the
    stage-1 training draw (``stage1.sampling``; stage 2 stays uniform)."""
    return [
        f"data.scale={args.scale}",
        f"stage1.pseudo.scales=[{args.pseudo_scales}]",
        f"stage1.sampling={args.sampling}",
    ]


def score_maps(preds: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, Any]:
    """Tissue-protocol metrics of predicted class maps (the library's ConfusionMatrix)."""
    cm = ConfusionMatrix(len(CLASSES) + 1, background_index=BACKGROUND, class_names=[*CLASSES, "background"])
    for pred, mask in zip(preds, masks, strict=True):
        cm.update(pred, apply_protocol(mask, Protocol.TISSUE, BACKGROUND))
    out: dict[str, Any] = flat_metrics(cm.compute())
    out.pop("IoU_background", None)
    out["protocol"] = Protocol.TISSUE.value
    return out


def trivial_baselines(data: Path, split: str, min_share: float, scale: float = 1.0) -> dict[str, dict[str, float]]:
    """Best one-class-everywhere (label-free) and best tile-label priority (label-gated), with hindsight, on the
    masks at the models' resolution."""
    masks = _split_masks(data, split, scale)
    one = max(
        (score_maps([np.full_like(m, c) for m in masks], masks) for c in range(len(CLASSES))), key=lambda r: r["mIoU"]
    )
    best: dict[str, float] = {"mIoU": -1.0}
    for order in itertools.permutations(range(len(CLASSES))):
        preds = []
        for m in masks:
            present = [c for c in order if (m == c).mean() >= min_share] or [order[0]]
            preds.append(np.full_like(m, present[0]))
        r = score_maps(preds, masks)
        if r["mIoU"] > best["mIoU"]:
            best = {**r, "priority": ">".join(CLASSES[c] for c in order)}  # type: ignore[dict-item]
    return {"one_class": one, "tile_label": best}


def stage2_from(cfg: Any, ckpt1: Path, pseudo: Path) -> Path:
    """Stage 2 on the stage-1 checkpoint's pseudo-masks (the library's pipeline); the stage-2 checkpoint."""
    return best_or_last(train_stage2(cfg, pseudo, stage1=ckpt1).last.parent)


def per_class_copy(checkpoint: Path, out: Path) -> Path:
    """The stage-1 checkpoint with label-free prediction on per-class min-max CAMs (``stage1.label_free_cams=
    per_class``, the rule before joint scaling) instead of one scale for the kept classes: same weights."""
    ckpt = load_checkpoint(checkpoint)
    return save_checkpoint(ckpt.with_updates(model_config={**ckpt.model_config, "free_cams": "per_class"}), out)


def recipe_epochs(args: argparse.Namespace, name: str) -> int:
    """Stage-1 epochs of a recipe: ``--epochs`` for CAM, ``--proto-epochs`` for the prototype recipes, whose
    steps cost 2.4-5x a CAM step on the CPU (a time budget, said in the table's header)."""
    return args.epochs if name == "CAM" else args.proto_epochs


def run_recipe(args: argparse.Namespace, data: Path, seed: int, name: str) -> dict[str, Any]:
    """Stage 1 -> pseudo-masks -> stage 2 for one recipe and seed through the library's pipeline."""
    out = args.out / f"seed{seed}" / name
    cfg = base_config(
        args, data, seed, [*RECIPES[name], *shared(args), f"stage1.epochs={recipe_epochs(args, name)}"], out
    )
    t0 = time.perf_counter()
    ckpt1 = best_or_last(train_stage1(cfg).last.parent)
    row: dict[str, Any] = {
        "pseudo_val": evaluate_checkpoint(
            cfg, ckpt1, Split.VAL, use_labels=True, protocol="tissue", label_min_share=args.min_share
        ),
        "pseudo_val_any": evaluate_checkpoint(cfg, ckpt1, Split.VAL, use_labels=True, protocol="tissue"),
        "free_val": evaluate_checkpoint(cfg, ckpt1, Split.VAL, protocol="tissue"),
        "free_test": evaluate_checkpoint(cfg, ckpt1, Split.TEST, protocol="tissue"),
    }
    per_class = per_class_copy(ckpt1, out / "stage1_per_class_cams.pt")  # same weights, min-max CAMs per class
    paper = base_config(args, data, seed, [*RECIPES[name], *shared(args), "stage1.pseudo.cams=per_class"], out)
    row["perclass_pseudo_val"] = evaluate_checkpoint(
        paper, ckpt1, Split.VAL, use_labels=True, protocol="tissue", label_min_share=args.min_share
    )
    row["perclass_val"] = evaluate_checkpoint(cfg, per_class, Split.VAL, protocol="tissue")
    row["perclass_test"] = evaluate_checkpoint(cfg, per_class, Split.TEST, protocol="tissue")
    pseudo = make_pseudo_masks(cfg, ckpt1)
    ckpt2 = stage2_from(cfg, ckpt1, pseudo)  # its encoder starts from stage 1's (stage2.encoder_init=auto)
    row["stage2_test"] = evaluate_checkpoint(cfg, ckpt2, Split.TEST, protocol="tissue")
    row["stage2_gated_val"] = evaluate_checkpoint(  # what a second round of pseudo-masks from stage 2 would be
        cfg, ckpt2, Split.VAL, use_labels=True, protocol="tissue", label_min_share=args.min_share
    )
    if args.stage2_random:  # the same pseudo-masks, stage 2 from random init (protoseg before this round)
        rand = base_config(
            args, data, seed, [*RECIPES[name], *shared(args), "stage2.encoder_init=weights"], out / "random_init"
        )
        row["stage2_random_test"] = evaluate_checkpoint(
            rand, stage2_from(rand, ckpt1, pseudo), Split.TEST, protocol="tissue"
        )
    row["wall_s"] = time.perf_counter() - t0
    chosen = load_checkpoint(ckpt1)  # which stage-1 epoch best.pt holds, and by which metric
    row["stage1_epoch"], row["stage1_selected_by"] = chosen.epoch, chosen.metrics.get("selection_metric", "mIoU")
    print(
        f"seed {seed} {name}: stage 1 epoch {chosen.epoch} ({row['stage1_selected_by']}), "
        f"pseudo {100 * row['pseudo_val']['mIoU']:.1f}, label-free val "
        f"{100 * row['free_val']['mIoU']:.1f}, test stage1 {100 * row['free_test']['mIoU']:.1f} -> stage2 "
        f"{100 * row['stage2_test']['mIoU']:.1f} (label-gated val {100 * row['stage2_gated_val']['mIoU']:.1f}), "
        f"per-class CAMs: val {100 * row['perclass_val']['mIoU']:.1f} test "
        f"{100 * row['perclass_test']['mIoU']:.1f}, {row['wall_s']:.0f} s",
        flush=True,
    )
    return row


def _cell(rows: list[dict[str, Any]], key: str) -> str:
    """``mean ± std`` mIoU over seeds with each class's IoU ("–" when not measured)."""
    if any(key not in r for r in rows):
        return "–"
    per_class = " ".join(f"{c} {mean_sd([r[key].get(f'IoU_{c}', 0.0) for r in rows])}" for c in CLASSES)
    return f"{mean_sd([r[key]['mIoU'] for r in rows])} ({per_class})"


def table(base: list[dict[str, Any]], rows: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: trivial baselines and recipes, mean ± std over seeds, tissue protocol."""
    lines = [
        "| mIoU % (per-class IoU), tissue protocol | label-gated pseudo-masks, val | label-free, val "
        "| label-free stage 1, test | stage 2, test | stage 2 from random init, test | wall s / seed "
        "| pseudo-masks, val, labels from any mask pixel | label-free, per-class CAMs, val | same, test "
        "| pseudo-masks, per-class CAMs, val | stage 2 label-gated, val |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| trivial: each tile one of its labels (best priority) | {_cell(_wrap(base, 'val_tile'), 'x')} "
        f"| – | – | – | – | – | – | – | – | – | {_cell(_wrap(base, 'val_tile'), 'x')} |",
        f"| trivial: every pixel one class (best class) | – | {_cell(_wrap(base, 'val_one'), 'x')} "
        f"| {_cell(_wrap(base, 'test_one'), 'x')} | – | – | – | – | – | – | – | – |",
    ]
    for name, rs in rows.items():
        lines.append(
            f"| {name} | {_cell(rs, 'pseudo_val')} | {_cell(rs, 'free_val')} | {_cell(rs, 'free_test')} "
            f"| {_cell(rs, 'stage2_test')} | {_cell(rs, 'stage2_random_test')} "
            f"| {statistics.mean(r['wall_s'] for r in rs):.0f} | {_cell(rs, 'pseudo_val_any')} "
            f"| {_cell(rs, 'perclass_val')} | {_cell(rs, 'perclass_test')} | {_cell(rs, 'perclass_pseudo_val')} "
            f"| {_cell(rs, 'stage2_gated_val')} |"
        )
    return "\n".join(lines)


def _wrap(base: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Baseline results of ``key`` shaped like recipe rows (one metrics dict under ``"x"``)."""
    return [{"x": b[key]} for b in base]


def add_training_args(p: argparse.ArgumentParser) -> None:
    """The dataset and training options shared with ``correction_curve.py``."""
    p.add_argument("--min-share", type=float, default=0.02, help="share of a tile that makes a class present")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="null", help="null = random init (offline); auto = ImageNet when available")
    p.add_argument("--epochs", type=int, default=10, help="stage-1 epochs (10: the CLI default)")
    p.add_argument("--epochs2", type=int, default=20, help="stage-2 epochs (6 left stage 2 5.7 points lower here)")
    p.add_argument("--proto-epochs", type=int, default=10, help="stage-1 epochs of PBIP / LPD (steps cost 1.2-5x)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr2", type=float, default=5e-4)
    p.add_argument("--n-per-cluster", type=int, default=20)
    p.add_argument("--encoder-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    add_common_args(p)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="WSSS4LUAD folder (img/, mask/)")
    p.add_argument("--out", type=Path, default=Path("/tmp/protoseg-wsss-real"))
    p.add_argument("--quick", action="store_true", help="smoke size: 1 seed, CAM, a few tiles, 1 epoch, 64 px")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for mean ± std)")
    p.add_argument("--recipes", default="CAM,PBIP,LPD", help="comma-separated subset of: " + ", ".join(RECIPES))
    p.add_argument("--tile", type=int, default=224, help="tile side cut from the regions (px)")
    p.add_argument("--size", type=int, default=224, help="data.patch_size (recorded; folder tiles keep their size)")
    p.add_argument(
        "--scale",
        type=float,
        default=0.5,
        help="data.scale: tiles (and the masks scored) resampled by it; 0.5 (half): label-free stage 1 +12 points",
    )
    p.add_argument("--pseudo-scales", default="1.0", help="stage1.pseudo.scales, comma-separated (1.0: one pass)")
    p.add_argument(
        "--sampling",
        default="balanced",
        choices=("uniform", "balanced"),
        help="stage1.sampling (balanced: NOR, in 14%% of training tiles, drawn as often as TE / TAS); stage 2 uniform",
    )
    p.add_argument("--max-tiles", type=int, default=None, help="tiles per split at most (quick runs)")
    add_training_args(p)
    p.add_argument(
        "--no-stage2-random",
        dest="stage2_random",
        action="store_false",
        help="skip the comparison run of stage 2 from random init (stage2.encoder_init=weights)",
    )
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.recipes, args.max_tiles = "0", "CAM", 12
        args.tile, args.size, args.epochs, args.epochs2, args.batch, args.encoder_size = 128, 64, 1, 1, 8, 64
        args.proto_epochs, args.scale, args.pseudo_scales = 1, 0.5, "1.0,1.5"  # 64-px tiles; both options run
        args.warm_start_steps = 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not (args.data / "img").is_dir() or not (args.data / "mask").is_dir():
        print(f"wsss_real: skipped: no WSSS4LUAD folder at {args.data.resolve()} (img/, mask/); pass --data DIR")
        return 0
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    base: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in seeds:
        data = args.out / f"seed{seed}" / "data"
        if not (data / "train" / "labels.csv").is_file():
            write_dataset(args.data, data, seed, args.tile, args.min_share, args.max_tiles)
        val = trivial_baselines(data, "val", args.min_share, args.scale)
        test = trivial_baselines(data, "test", args.min_share, args.scale)
        base.append({"val_tile": val["tile_label"], "val_one": val["one_class"], "test_one": test["one_class"]})
        for name in names:
            rows[name].append(run_recipe(args, data, seed, name))
            save_results(args, base, rows)  # after every row: a long run stopped early keeps what it measured
    total = time.perf_counter() - t0
    overrides = f"overrides {' '.join(args.overrides)}, " if args.overrides else ""
    print()
    print(
        f"WSSS4LUAD, {len(seeds)} seed(s), tiles of {args.tile} px resampled by {args.scale:g} (data.scale), "
        f"pseudo-mask scales {args.pseudo_scales}, {args.sampling} stage-1 sampling, warm start {args.warm_start}"
        f"{f' ({args.warm_start_steps} steps)' if args.warm_start != 'none' else ''}"
        f"{f', <= {args.max_tiles} per split' if args.max_tiles else ''}, {args.backbone} ({args.weights}), "
        f"{overrides}"
        f"stage 1 {args.epochs} epochs (CAM) / {args.proto_epochs} (prototype recipes), stage 2 {args.epochs2}, "
        f"{args.device} ({args.threads} thread(s)), tissue protocol, "
        f"{total / 60:.1f} min"
    )
    print(table(base, rows))
    return 0


def save_results(args: argparse.Namespace, base: list[dict[str, Any]], rows: dict[str, list[dict[str, Any]]]) -> None:
    """``results.json`` under ``--out``: settings, baselines and every row measured so far."""
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"settings": {k: str(v) for k, v in vars(args).items()}, "baselines": base, "rows": rows}
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))


if __name__ == "__main__":
    raise SystemExit(main())
