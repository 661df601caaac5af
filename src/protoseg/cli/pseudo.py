"""``protoseg pseudo``: export stage-1 pseudo-masks (palette PNG + confidence) for the training patches."""

from __future__ import annotations

import argparse

from protoseg.cli.common import HELP_OVERWRITE_DIR, add_config_args, config_from_args


def _run(args: argparse.Namespace) -> int:
    from protoseg.cli.progress import progress_bar
    from protoseg.train.pipeline import make_pseudo_masks

    extra = [f"data.root={args.data}"] if args.data else []
    if args.device:
        extra.append(f"run.device={args.device}")
    cfg = config_from_args(args, extra)
    bar = progress_bar("pseudo-masks", unit="patch")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        out = make_pseudo_masks(cfg, args.checkpoint, args.out, progress, overwrite=args.overwrite)
    finally:
        bar.close()  # before any error line, not after it
    print(out)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pseudo", help="export pseudo-masks of the training patches from a stage-1 checkpoint")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="stage-1 checkpoint (.pt)")
    p.add_argument("--data", help="dataset folder")
    p.add_argument("--out", help="output folder (default RUN/pseudo); re-exported whole when the checkpoint changes")
    p.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE_DIR)
    p.add_argument("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.set_defaults(func=_run)
