"""``protoseg train stage1|stage2``: train from a YAML config with overrides, with a progress bar."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from protoseg.cli.args import int_at_least, positive_float
from protoseg.cli.common import ProgressBar, add_config_args, config_from_args
from protoseg.config import AddOn, Recipe, Sampling, WarmStart
from protoseg.presets import list_presets

logger = logging.getLogger(__name__)


def _shortcuts(args: argparse.Namespace) -> list[str]:
    out = []
    if args.data:
        out.append(f"data.root={args.data}")
    if args.out:
        out.append(f"run.out_dir={args.out}")
    if getattr(args, "recipe", None):
        out.append(f"stage1.recipe={args.recipe}")
    if getattr(args, "addons", None):
        out.append(f"stage1.addons=[{args.addons}]")
    if getattr(args, "bank", None):
        out.append(f"bank.path={args.bank}")
    if getattr(args, "sampling", None):
        out.append(f"stage1.sampling={args.sampling}")
    if getattr(args, "warm_start", None):
        out.append(f"stage1.warm_start={args.warm_start}")
    if args.epochs is not None:
        out.append(f"{args.stage}.epochs={args.epochs}")
    if args.lr is not None:
        out.append(f"{args.stage}.lr={args.lr}")
    if args.batch_size is not None:
        out.append(f"data.batch_size={args.batch_size}")
    if args.patch_size is not None:
        out.append(f"data.patch_size={args.patch_size}")
    if args.device:
        out.append(f"run.device={args.device}")
    return out


def _retrain(args: argparse.Namespace) -> int:
    """``train stage2 --from CKPT --corrections PATH...``: fine-tune on corrections (stores, or GeoJSON files
    with --slide: imported into OUT/corrections/ on the checkpoint's grid)."""
    from protoseg.errors import ProtosegError
    from protoseg.train.retrain import RetrainSettings, retrain_from_corrections

    if not (args.from_checkpoint and args.corrections and args.out):
        raise ProtosegError("retrain from corrections needs --from CKPT, --corrections PATH [PATH ...] and --out DIR")
    geojson = [c for c in args.corrections if c.lower().endswith((".geojson", ".json"))]
    slides = args.slide or []
    if geojson and len(slides) not in (1, len(geojson)):
        raise ProtosegError(
            f"{len(geojson)} GeoJSON file(s) need --slide: one slide for all, or one per GeoJSON file in order"
        )
    stores = []
    for path in args.corrections:
        if path in geojson:
            from protoseg.corrections.geojson import store_from_geojson

            slide = slides[0] if len(slides) == 1 else slides[geojson.index(path)]
            path = str(store_from_geojson(path, slide, args.from_checkpoint, Path(args.out) / "corrections").path)
        stores.append(path)
    defaults = RetrainSettings()
    settings = RetrainSettings(
        epochs=args.epochs or defaults.epochs,
        lr=args.lr or defaults.lr,
        batch_size=args.batch_size or defaults.batch_size,
        patch=args.patch_size,
        replay=defaults.replay if args.replay is None else args.replay,
        distill=defaults.distill if args.distill is None else args.distill,
        trust_reviewed=defaults.trust_reviewed if args.trust_reviewed is None else args.trust_reviewed,
        device=args.device or defaults.device,
    )
    bar = ProgressBar("retrain")
    best = retrain_from_corrections(
        args.from_checkpoint, stores, args.out, settings, [bar], resume=args.resume, overwrite=args.overwrite
    )
    print(json.dumps({"stage": "stage2", "retrained_from": args.from_checkpoint, "best": str(best)}))
    return 0


def _run(args: argparse.Namespace) -> int:
    from protoseg.train.pipeline import train_stage1, train_stage2

    if getattr(args, "from_checkpoint", None) or getattr(args, "corrections", None):
        return _retrain(args)
    cfg = config_from_args(args, _shortcuts(args))
    bar = ProgressBar(args.stage)
    if args.stage == "stage1":
        result = train_stage1(cfg, [bar], resume=args.resume, overwrite=args.overwrite)
    else:
        pseudo = args.pseudo or str(Path(cfg.run.out_dir) / "pseudo")
        result = train_stage2(cfg, pseudo, [bar], resume=args.resume, overwrite=args.overwrite)
    summary = {
        "stage": args.stage,
        "best": str(result.best) if result.best else None,
        "last": str(result.last) if result.last.is_file() else None,  # never claim a file that was not written
        "best_metric": result.best_metric,
        "selection_metric": result.selection_metric,
        "epochs": result.epochs_done,
        "seconds": round(result.seconds, 1),
    }
    print(json.dumps(summary))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train stage 1 (CAM network) or stage 2 (segmentation network)")
    stages = p.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for stage, text in (
        ("stage1", "stage-1 ClassNet on image-level labels"),
        ("stage2", "stage-2 SegNet on exported pseudo-masks"),
    ):
        s = stages.add_parser(stage, help=text, description=text)
        add_config_args(s)
        s.add_argument(
            "--preset",
            choices=list_presets(),
            help="start from a paper preset (see `protoseg presets`): the method and its hyper-parameters; the "
            "layout and classes come from --data; --config and --set apply on top",
        )
        s.add_argument("--data", help="dataset folder (BCSS-WSSS, LUAD-HistoSeg or generic layout)")
        s.add_argument("--out", help="run folder (checkpoints go to OUT/stage1 or OUT/stage2)")
        s.add_argument("--epochs", type=int_at_least(1), help=f"training epochs ({stage}.epochs)")
        s.add_argument("--lr", type=positive_float, help=f"learning rate ({stage}.lr)")
        s.add_argument("--batch-size", type=int_at_least(1), help="patches per step (data.batch_size)")
        s.add_argument(
            "--patch-size",
            type=int_at_least(16),
            metavar="PX",
            help="training patch side in pixels for tagged slide regions (data.patch_size; patch folders train on "
            "their files as they are: --set data.scale=0.5 halves their resolution); an image bank built at another "
            "size still works",
        )
        s.add_argument("--device", help="auto, cpu, cuda, cuda:1, mps")
        again = s.add_mutually_exclusive_group()
        again.add_argument("--resume", action="store_true", help="continue from OUT/<stage>/last.pt")
        again.add_argument(
            "--overwrite",
            action="store_true",
            help="train again from scratch, replacing the checkpoints of an earlier run in OUT/<stage> "
            "(without it, or --resume, such a run folder is refused)",
        )
        if stage == "stage1":
            s.add_argument(
                "--recipe",
                choices=[r.value for r in Recipe],
                help="cam: plain class activation maps; pbip: image-bank prototypes; lpd: learnable prototypes",
            )
            s.add_argument("--addons", help="comma-separated add-on losses: " + ", ".join(a.value for a in AddOn))
            s.add_argument("--bank", help="image bank folder (PBIP; built from the training set when absent)")
            s.add_argument(
                "--sampling",
                choices=[m.value for m in Sampling],
                help="uniform: every patch once per epoch; balanced: patches of rare image-level classes drawn as "
                "often as common ones (stage1.sampling; stage 2: --set stage2.sampling=balanced)",
            )
            s.add_argument(
                "--warm-start",
                choices=[w.value for w in WarmStart],
                help="simclr: a backbone without pretrained weights first learns from the unlabelled training "
                "patches (stage1.warm_start; steps: --set stage1.warm_start_steps=N); none: random init as is",
            )
        else:
            s.add_argument("--pseudo", help="pseudo-mask folder (default OUT/pseudo)")
            r = s.add_argument_group(
                "retrain from corrections",
                "fine-tune --from CKPT on painted corrections into --out DIR (a new checkpoint with its lineage; "
                "the parent is never replaced); --epochs, --lr, --batch-size, --patch-size, --device apply",
            )
            r.add_argument("--from", dest="from_checkpoint", metavar="CKPT", help="stage-2 checkpoint to fine-tune")
            r.add_argument(
                "--corrections",
                nargs="+",
                metavar="PATH",
                help="corrections stores (<slide>.corrections.zarr), or QuPath GeoJSON files with --slide",
            )
            r.add_argument(
                "--slide",
                nargs="+",
                metavar="SLIDE",
                help="the slide of the GeoJSON corrections (one, or one per file)",
            )
            r.add_argument("--replay", type=float, help="replay patches per corrected patch (default 1)")
            r.add_argument(
                "--distill",
                type=float,
                help="weight of keeping the parent's scores on the replay patches (KL, default 1; 0 = off)",
            )
            r.add_argument(
                "--trust-reviewed",
                action=argparse.BooleanOptionalAction,
                default=None,
                help="train the unpainted pixels of regions marked reviewed on the model's prediction there "
                "(the user saw them and left them; default on)",
            )
        s.set_defaults(func=_run)
