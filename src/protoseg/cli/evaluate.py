"""``protoseg eval``: mIoU, FwIoU, Dice, coverage and boundary IoU of a checkpoint on a labelled split."""

from __future__ import annotations

import argparse
import json

from protoseg.cli.common import add_config_args, config_from_args


def _run(args: argparse.Namespace) -> int:
    from protoseg.data.records import Split
    from protoseg.train.pipeline import evaluate_checkpoint

    extra = [f"data.root={args.data}"] if args.data else []
    if args.tta:
        extra.append("stage2.tta=true")
    cfg = config_from_args(args, extra)
    metrics = evaluate_checkpoint(
        cfg, args.checkpoint, Split(args.split), use_labels=args.use_labels, protocol=args.protocol
    )
    print(json.dumps(metrics, indent=None if args.json else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint against ground-truth masks")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt written by `protoseg train`")
    p.add_argument("--data", help="dataset folder with val/ or test/ masks")
    p.add_argument("--split", default="test", choices=["val", "test"], help="which masks to score (default test)")
    p.add_argument(
        "--use-labels", action="store_true", help="stage 1: gate CAMs with the image-level labels (pseudo-mask quality)"
    )
    p.add_argument("--tta", action="store_true", help="stage 2: flip test-time augmentation")
    p.add_argument(
        "--protocol",
        default="pbip",
        choices=["pbip", "tissue"],
        help="pbip: background is a class (default); tissue: MLPS/WSSS-Tissue, ground-truth background "
        "pixels excluded. The report names the protocol.",
    )
    p.add_argument("--json", action="store_true", help="one-line JSON output")
    p.set_defaults(func=_run)
