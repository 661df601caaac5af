"""``protoseg bank build|show``: build the PBIP image bank from a dataset, or summarise a bank folder."""

from __future__ import annotations

import argparse
import json

from protoseg.cli.args import int_at_least
from protoseg.cli.common import HELP_OVERWRITE_DIR, add_config_args, config_from_args
from protoseg.config import ProtosegConfig
from protoseg.models.encoders.errors import EncoderError


def _build(args: argparse.Namespace) -> int:
    from protoseg.train.pipeline import build_bank_from_config

    extra = [f"data.root={args.data}"] if args.data else []
    extra += _encoder_overrides(args)
    if args.k is not None:
        extra.append(f"bank.k={args.k}")
    if args.n is not None:
        extra.append(f"bank.n_per_cluster={args.n}")
    if args.encoder_size is not None:
        extra.append(f"bank.encoder.input_size={args.encoder_size}")
    cfg = config_from_args(args, extra)
    _check_encoder(cfg, args)
    bank = build_bank_from_config(cfg, args.out, overwrite=args.overwrite)
    print(json.dumps(_summary(bank, args.out)))
    return 0


def _encoder_overrides(args: argparse.Namespace) -> list[str]:
    """``bank.encoder.*`` overrides of the flags given (``--encoder``, ``--encoder-name``, ``--encoder-weights``),
    values quoted so that paths stay strings."""
    given = (("kind", args.encoder), ("model_name", args.encoder_name), ("pretrained", args.encoder_weights))
    return [f"bank.encoder.{key}={json.dumps(value.strip())}" for key, value in given if value is not None]


def _check_encoder(cfg: ProtosegConfig, args: argparse.Namespace) -> None:
    """Refuse, in one line and before any data is read, a name or weights for the descriptor, a missing
    weights path or a model kind without a model name."""
    from protoseg.models.encoders.spec import EncoderKind, encoder_choice

    e = cfg.bank.encoder
    if e.kind is EncoderKind.DESCRIPTOR:
        if args.encoder_name is not None or args.encoder_weights is not None:
            raise EncoderError("--encoder-name / --encoder-weights need --encoder open_clip or --encoder timm")
        return
    encoder_choice(e.kind.value, e.model_name, e.pretrained or "")


def _summary(bank, folder) -> dict:
    counts = bank.cluster_counts()
    return {
        "folder": str(folder),
        "encoder": bank.encoder_id,
        "encoder_input_size": bank.encoder_input_size,
        "data_scale": bank.data_scale,  # the resampling of the folder patches it was built from (None: unknown)
        "k": bank.k,
        "dim": bank.dim,
        "members": len(bank),
        "excluded": int(sum(1 for m in bank.members if m.excluded)),
        "per_class_cluster": {name: [int(c) for c in counts[i]] for i, name in enumerate(bank.class_spec.names)},
    }


def _show(args: argparse.Namespace) -> int:
    from protoseg.bank import load_bank

    bank = load_bank(args.folder)
    print(json.dumps(_summary(bank, args.folder), indent=2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bank", help="build or inspect an image bank (prototype patches per class)")
    cmds = p.add_subparsers(dest="bank_command", metavar="ACTION", required=True)
    b = cmds.add_parser("build", help="embed single-class training patches, cluster per class, keep the nearest")
    add_config_args(b)
    b.add_argument("--data", help="dataset folder")
    b.add_argument("--out", required=True, help="bank folder to write")
    b.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE_DIR)
    b.add_argument(
        "--encoder",
        choices=["descriptor", "open_clip", "timm"],
        help="bank.encoder.kind: the built-in H&E descriptor (default, no weights), an open_clip model "
        "(CLIP, QuiltNet, PLIP-style) or a timm model (pathology foundation models)",
    )
    b.add_argument(
        "--encoder-name",
        metavar="NAME",
        help="bank.encoder.model_name: the open_clip / timm model, e.g. ViT-B-32, resnet50 or hf-hub:org/repo "
        "(may be left out when --encoder-weights is an hf-hub id or a model folder)",
    )
    b.add_argument(
        "--encoder-weights",
        metavar="WEIGHTS",
        help="bank.encoder.pretrained: hf-hub:org/repo (downloaded once into the Hugging Face cache and read "
        "from it offline), an open_clip / timm tag (e.g. openai), a local weights file, or a local model "
        "folder (e.g. from `hf download org/repo --local-dir DIR`); left out: random init",
    )
    b.add_argument("--k", type=int_at_least(1), help="sub-clusters per class (default 3)")
    b.add_argument("--n", type=int_at_least(1), help="members kept per sub-cluster (default 100)")
    b.add_argument(
        "--encoder-size",
        type=int_at_least(16),
        metavar="PX",
        help="side the encoder resizes patches to (recorded in the bank; training at any patch size reuses it; "
        "default: the patch size for the descriptor, the model's own for open_clip/timm)",
    )
    b.set_defaults(func=_build)
    s = cmds.add_parser("show", help="summarise a bank folder")
    s.add_argument("folder", help="bank folder (holds manifest.json)")
    s.set_defaults(func=_show)
