"""``protoseg synth dataset|slide``: deterministic synthetic H&E data with ground truth."""

from __future__ import annotations

import argparse

from protoseg.cli.args import float_in, int_at_least
from protoseg.cli.common import HELP_OVERWRITE_DIR
from protoseg.config_ranges import MPP

#: ``protoseg.outputs`` marker kind of a ``synth dataset`` folder.
DATASET_KIND = "synthetic-dataset"


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 3072x2304, got {text!r}") from None
    if min(w, h) < 16:
        raise argparse.ArgumentTypeError(f"width and height must be >= 16, got {text!r}")
    return w, h


def _dataset(args: argparse.Namespace) -> int:
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.outputs import replace_dir

    with replace_dir(args.out, DATASET_KIND, overwrite=args.overwrite) as tmp:
        write_bcss_dataset(
            tmp,
            n_train=args.n_train,
            n_val=args.n_val,
            n_test=args.n_test,
            size=args.size,
            seed=args.seed,
            mpp=args.mpp,
        )
    print(args.out)
    return 0


def _slide(args: argparse.Namespace) -> int:
    import os
    import shutil
    import tempfile
    from dataclasses import replace
    from pathlib import Path

    from protoseg.data.synthetic.writers import SAMPLE_SLIDE, mask_path_for
    from protoseg.outputs import OutputOwnershipError

    out = Path(args.out)
    targets = (out, mask_path_for(out))
    taken = [p for p in targets if p.exists()]
    if taken and not args.overwrite:
        raise OutputOwnershipError(
            f"{', '.join(map(str, taken))} already exist(s); choose another path or pass --overwrite to replace"
        )
    if any(p.is_dir() for p in taken):
        raise OutputOwnershipError(f"{', '.join(str(p) for p in taken if p.is_dir())} is a folder; give a file path")
    given = {"size": args.size, "mpp": args.mpp, "seed": args.seed, "tile_size": args.tile}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:  # written beside, then renamed into place: a killed run leaves no half-written slide
        s = replace(SAMPLE_SLIDE, **{k: v for k, v in given.items() if v is not None}).write(tmp / out.name)
        os.replace(s.path, out)
        os.replace(s.mask_path, targets[1])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(out)
    print(targets[1])
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic H&E data with known ground truth")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    d = kinds.add_parser("dataset", help="patches in the BCSS-WSSS layout (train names carry labels; val/test masks)")
    d.add_argument("out", help="dataset folder to write (train/, val/, test/)")
    d.add_argument("--n-train", type=int_at_least(1), default=200, help="training patches (default 200)")
    d.add_argument("--n-val", type=int_at_least(0), default=40, help="validation patches with masks (default 40)")
    d.add_argument("--n-test", type=int_at_least(0), default=40, help="test patches with masks (default 40)")
    d.add_argument("--size", type=int_at_least(16), default=224, help="patch size in pixels")
    d.add_argument("--mpp", type=float_in(MPP), default=0.5, help="microns per pixel written in the names (0.5)")
    d.add_argument("--seed", type=int, default=0, help="random seed (same seed, same dataset)")
    d.add_argument("--overwrite", action="store_true", help=HELP_OVERWRITE_DIR)
    d.set_defaults(func=_dataset)
    # unset options take the sample slide's values (protoseg.data.synthetic.SAMPLE_SLIDE), read only when run
    s = kinds.add_parser(
        "slide",
        help="a small pyramidal TIFF section with its mask (<stem>_mask.png); "
        "the defaults make the plugin's sample slide",
    )
    s.add_argument("out", help="slide file to write (.tif pyramidal TIFF)")
    s.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: the sample slide's)")
    s.add_argument("--mpp", type=float_in(MPP), default=None, help="microns per pixel (default: the sample slide's)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: the sample slide's)")
    s.add_argument(
        "--tile", type=int_at_least(16), default=None, help="TIFF tile size in px (default: the sample slide's)"
    )
    s.add_argument("--overwrite", action="store_true", help="replace OUT and its mask if they exist")
    s.set_defaults(func=_slide)
