"""``protoseg eval``: mIoU, FwIoU, Dice, coverage and boundary IoU of a checkpoint on a labelled split,
beside the split's trivial baselines (``protoseg.train.baselines``)."""

from __future__ import annotations

import argparse
import json
import logging
from typing import Any

from protoseg.cli.args import float_in
from protoseg.cli.common import add_config_args, config_from_args
from protoseg.config import ProtosegConfig
from protoseg.config_ranges import FRACTION
from protoseg.data.masks import DEFAULT_MIN_SHARE
from protoseg.train.baselines import comparison_line, fair_baseline, split_baselines

logger = logging.getLogger(__name__)


def _baselines(cfg: ProtosegConfig, args: argparse.Namespace, metrics: dict[str, Any]) -> dict[str, Any]:
    """The split's trivial baselines, logged in one line beside the model's mIoU (WARNING when not beaten)."""
    scale = float(metrics.get("data_scale", 1.0))  # the masks as the model was scored on them
    base = split_baselines(cfg.data.root, args.split, cfg.data.layout, args.protocol, args.min_share, scale)
    miou, bar = metrics.get("mIoU"), fair_baseline(base, args.use_labels).get("mIoU")
    line = comparison_line(miou, base)
    if miou is not None and bar is not None and miou <= bar:
        kind = "label-gated (each image one of its labels)" if args.use_labels else "label-free (one class everywhere)"
        logger.warning("%s; the model is no better than the trivial %s baseline", line, kind)
    else:
        logger.info("%s", line)
    return base


def _run(args: argparse.Namespace) -> int:
    from protoseg.data.records import Split
    from protoseg.train.pipeline import evaluate_checkpoint

    extra = [f"data.root={args.data}"] if args.data else []
    if args.tta:
        extra.append("stage2.tta=true")
    cfg = config_from_args(args, extra)
    metrics = evaluate_checkpoint(
        cfg,
        args.checkpoint,
        Split(args.split),
        use_labels=args.use_labels,
        protocol=args.protocol,
        label_min_share=args.min_share,
    )
    if not args.no_baselines:
        metrics["baselines"] = _baselines(cfg, args, metrics)
    print(json.dumps(metrics, indent=None if args.json else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a checkpoint against ground-truth masks")
    add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint .pt written by `protoseg train`")
    p.add_argument("--data", help="dataset folder with val/ or test/ masks")
    p.add_argument("--split", default="test", choices=["val", "test"], help="which masks to score (default test)")
    p.add_argument(
        "--use-labels",
        action="store_true",
        help="gate with the image-level labels: stage 1's CAMs (pseudo-mask quality), stage 2's classes",
    )
    p.add_argument("--tta", action="store_true", help="stage 2: flip test-time augmentation")
    p.add_argument(
        "--protocol",
        default="pbip",
        choices=["pbip", "tissue"],
        help="pbip: background is a class (default); tissue: MLPS/WSSS-Tissue, ground-truth background "
        "pixels excluded. The report names the protocol.",
    )
    p.add_argument(
        "--no-baselines",
        action="store_true",
        help="skip the trivial baselines (one class everywhere; each image one of its labels) printed beside "
        "the metrics; they read the split's masks once more",
    )
    p.add_argument(
        "--min-share",
        "--baseline-min-share",
        dest="min_share",
        type=float_in(FRACTION),
        default=DEFAULT_MIN_SHARE,
        help="share of a patch a class must cover to count as one of its labels, for --use-labels and for the "
        f"label-gated baseline alike (default {DEFAULT_MIN_SHARE:g}; 0 = every class with a pixel in the mask)",
    )
    p.add_argument("--json", action="store_true", help="one-line JSON output")
    p.set_defaults(func=_run)
