"""Weakly supervised segmentation on synthetic H&E with known ground truth, over several seeds (not a test).

For each seed: a BCSS-WSSS-layout dataset from protoseg's synthetic generator; per recipe (CAM
baseline, PBIP, LPD, PBIP+PSCL) stage 1 from the same random-init backbone and data, its label-gated
pseudo-masks (the exported ones: ``protoseg eval --use-labels``) and its label-free prediction (the
``Predictor`` path) on val, then pseudo-mask export, stage 2 on those masks, and stage 1 / stage 2
label-free on test. Label-free stage 1 uses the class gate calibrated on val during training (stored
in the checkpoint); the "fixed 0.8 gate" columns evaluate the same checkpoint without it. Prints mean ± std
over seeds and the three acceptance checks of issue 10 as pass counts:

- A1: pseudo-mask mIoU >= the same checkpoint's label-free prediction mIoU (val);
- A2: stage 2 >= its stage 1, label-free, on test;
- A3: no class collapses: each class's pseudo-mask IoU >= 0.8 x its label-free IoU (val).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/wsss_synthetic.py --out /tmp/wsss --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from protoseg.config import ProtosegConfig, load_config
from protoseg.data.records import Split
from protoseg.data.synthetic.writers import write_bcss_dataset
from protoseg.models.checkpoint import load_checkpoint, save_checkpoint
from protoseg.train.pipeline import best_or_last, evaluate_checkpoint, make_pseudo_masks, train_stage1, train_stage2

logger = logging.getLogger("wsss_synthetic")

RECIPES: dict[str, list[str]] = {
    "CAM baseline": ["stage1.recipe=cam"],
    "PBIP": ["stage1.recipe=pbip"],
    "LPD": ["stage1.recipe=lpd"],
    "PBIP+PSCL": ["stage1.recipe=pbip", "stage1.addons=[pscl]"],
}
CLASS_RATIO = 0.8  # A3: pseudo-mask IoU of each class >= this x its label-free IoU


def base_config(args: argparse.Namespace, data: Path, seed: int, recipe: list[str], out: Path) -> ProtosegConfig:
    return load_config(
        None,
        [
            f"data.root={data}",
            f"data.patch_size={args.size}",
            f"data.batch_size={args.batch}",
            f"model.backbone={args.backbone}",
            f"stage2.backbone={args.backbone}",
            f"model.weights={args.weights}",
            f"stage2.weights={args.weights}",
            f"stage1.epochs={args.epochs}",
            f"stage2.epochs={args.epochs2}",
            f"stage1.lr={args.lr}",
            f"stage2.lr={args.lr2}",
            f"bank.encoder.input_size={args.encoder_size}",
            f"bank.n_per_cluster={args.n_per_cluster}",
            f"run.device={args.device}",
            f"run.seed={seed}",
            "run.log_every=100000",
            f"run.out_dir={out}",
            f"stage1.warm_start={args.warm_start}",
            f"stage1.warm_start_steps={args.warm_start_steps}",
            *recipe,
            *args.overrides,
        ],
    )


def add_common_args(p: argparse.ArgumentParser) -> None:
    """``--warm-start`` / ``--warm-start-steps`` (protoseg's self-supervised warm start of a random-init backbone:
    SimCLR, 400 steps, on each run's training patches; off by default, as in protoseg) and ``--set KEY=VALUE``."""
    p.add_argument("--warm-start", default="none", choices=("none", "simclr"), help="stage1.warm_start")
    p.add_argument("--warm-start-steps", type=int, default=400, help="stage1.warm_start_steps")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any protoseg setting for every run (repeatable), e.g. --set stage1.similarity.masking=fill",
    )


def _class_ratio(pseudo: dict[str, Any], free: dict[str, Any]) -> float:
    """min over tissue classes of pseudo IoU / label-free IoU (classes the prediction misses count as 1)."""
    ratios = []
    for key, v in free.items():
        if key.startswith("IoU_") and key != "IoU_background" and v > 0:
            ratios.append(pseudo.get(key, 0.0) / v)
    return min(ratios) if ratios else math.inf


def fixed_gate_copy(checkpoint: Path, out: Path) -> Path:
    """The stage-1 checkpoint without its calibrated class gate: label-free prediction with the fixed
    ``stage1.score_gate`` threshold, as before calibration (and as checkpoints written before it)."""
    ckpt = load_checkpoint(checkpoint)
    config = {k: v for k, v in ckpt.model_config.items() if k != "class_thresholds"}
    return save_checkpoint(ckpt.with_updates(model_config=config), out)


def run_recipe(args: argparse.Namespace, data: Path, seed: int, name: str) -> dict[str, Any]:
    out = args.out / f"seed{seed}" / name.replace(" ", "_").replace("+", "_")
    cfg = base_config(args, data, seed, RECIPES[name], out)
    t0 = time.perf_counter()
    fit = train_stage1(cfg)
    ckpt1 = best_or_last(fit.last.parent)
    pseudo_val = evaluate_checkpoint(cfg, ckpt1, Split.VAL, use_labels=True)
    free_val = evaluate_checkpoint(cfg, ckpt1, Split.VAL, use_labels=False)
    free_test = evaluate_checkpoint(cfg, ckpt1, Split.TEST, use_labels=False)
    fixed1 = fixed_gate_copy(ckpt1, out / "stage1_fixed_gate.pt")
    fixed_val = evaluate_checkpoint(cfg, fixed1, Split.VAL, use_labels=False)
    fixed_test = evaluate_checkpoint(cfg, fixed1, Split.TEST, use_labels=False)
    pseudo_dir = make_pseudo_masks(cfg, ckpt1)
    fit2 = train_stage2(cfg, pseudo_dir, stage1=ckpt1)
    stage2_test = evaluate_checkpoint(cfg, best_or_last(fit2.last.parent), Split.TEST)
    wall = time.perf_counter() - t0
    row = {
        "pseudo_val": pseudo_val,
        "free_val": free_val,
        "free_test": free_test,
        "fixed_val": fixed_val,
        "fixed_test": fixed_test,
        "gate": load_checkpoint(ckpt1).model_config.get("class_thresholds"),
        "stage2_test": stage2_test,
        "A1": pseudo_val["mIoU"] >= free_val["mIoU"],
        "A2": stage2_test["mIoU"] >= free_test["mIoU"],
        "class_ratio": _class_ratio(pseudo_val, free_val),
        "wall_s": wall,
    }
    row["A3"] = row["class_ratio"] >= CLASS_RATIO
    print(
        f"seed {seed} {name}: pseudo {100 * pseudo_val['mIoU']:.1f} / label-free {100 * free_val['mIoU']:.1f} (val), "
        f"stage1 {100 * free_test['mIoU']:.1f} -> stage2 {100 * stage2_test['mIoU']:.1f} (test), "
        f"fixed gate {100 * fixed_val['mIoU']:.1f} (val) {100 * fixed_test['mIoU']:.1f} (test), gate {row['gate']}, "
        f"min class ratio {row['class_ratio']:.2f}, {wall:.0f} s",
        flush=True,
    )
    return row


def mean_sd(values: list[float]) -> str:
    """'mean ± sd' of fractions, in percent (sd 0 for one value)."""
    values = [100 * v for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {sd:.1f}"


def table(rows: dict[str, list[dict[str, Any]]]) -> str:
    lines = [
        "| method | pseudo-mask mIoU (val, label-gated) | stage 1 label-free (val) | A1 | min class ratio | A3 "
        "| stage 1 label-free (test) | stage 2 (test) | A2 | pseudo LYM IoU | wall s / seed "
        "| stage 1 label-free, fixed 0.8 gate (val) | same (test) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, rs in rows.items():
        n = len(rs)
        lines.append(
            f"| {name} | {mean_sd([r['pseudo_val']['mIoU'] for r in rs])} "
            f"| {mean_sd([r['free_val']['mIoU'] for r in rs])} "
            f"| {sum(r['A1'] for r in rs)}/{n} | {min(r['class_ratio'] for r in rs):.2f} "
            f"| {sum(r['A3'] for r in rs)}/{n} | {mean_sd([r['free_test']['mIoU'] for r in rs])} "
            f"| {mean_sd([r['stage2_test']['mIoU'] for r in rs])} | {sum(r['A2'] for r in rs)}/{n} "
            f"| {mean_sd([r['pseudo_val'].get('IoU_LYM', 0.0) for r in rs])} "
            f"| {statistics.mean(r['wall_s'] for r in rs):.0f} "
            f"| {mean_sd([r['fixed_val']['mIoU'] for r in rs])} | {mean_sd([r['fixed_test']['mIoU'] for r in rs])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("/tmp/protoseg-wsss"))
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (>= 3 for mean ± std)")
    p.add_argument("--n-train", type=int, default=96)
    p.add_argument("--n-val", type=int, default=24)
    p.add_argument("--n-test", type=int, default=24)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--weights", default="null", help="null = random init (offline); auto = ImageNet when available")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--epochs2", type=int, default=6)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--lr2", type=float, default=5e-4)
    p.add_argument("--n-per-cluster", type=int, default=20)
    p.add_argument("--encoder-size", type=int, default=64, help="HE-descriptor input size (bank + FG/BG losses)")
    p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of: " + ", ".join(RECIPES))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    add_common_args(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    names = [r.strip() for r in args.recipes.split(",") if r.strip()]
    rows: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    t0 = time.perf_counter()
    for seed in seeds:
        data = args.out / f"seed{seed}" / "data"
        if not (data / "train").is_dir():
            write_bcss_dataset(
                data, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test, size=args.size, seed=seed
            )
        for name in names:
            rows[name].append(run_recipe(args, data, seed, name))
    total = time.perf_counter() - t0
    device = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else f"{platform.processor() or 'CPU'}"
    print()
    print(
        f"{len(seeds)} seeds, {args.n_train}/{args.n_val}/{args.n_test} patches of {args.size} px, {args.backbone} "
        f"({args.weights}), {args.epochs}+{args.epochs2} epochs, device {args.device} ({device}, "
        f"{args.threads} thread(s)), PBIP protocol, {total / 60:.1f} min"
        f"{', overrides ' + ' '.join(args.overrides) if args.overrides else ''}"
    )
    print(table(rows))
    summary = {
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "total_s": total,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
