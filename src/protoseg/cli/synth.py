"""``protoseg synth dataset|slide``: deterministic synthetic H&E data with ground truth."""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT, e.g. 3072x2304, got {text!r}") from None
    return w, h


def _dataset(args: argparse.Namespace) -> int:
    from protoseg.data.synthetic.writers import write_bcss_dataset

    root = write_bcss_dataset(
        args.out,
        n_train=args.n_train,
        n_val=args.n_val,
        n_test=args.n_test,
        size=args.size,
        seed=args.seed,
        mpp=args.mpp,
    )
    print(root)
    return 0


def _slide(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from protoseg.data.synthetic.writers import SAMPLE_SLIDE

    given = {"size": args.size, "mpp": args.mpp, "seed": args.seed, "tile_size": args.tile}
    s = replace(SAMPLE_SLIDE, **{k: v for k, v in given.items() if v is not None}).write(args.out)
    print(s.path)
    print(s.mask_path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("synth", help="write synthetic H&E data with known ground truth")
    kinds = p.add_subparsers(dest="kind", metavar="KIND", required=True)
    d = kinds.add_parser("dataset", help="patches in the BCSS-WSSS layout (train names carry labels; val/test masks)")
    d.add_argument("out")
    d.add_argument("--n-train", type=int, default=200)
    d.add_argument("--n-val", type=int, default=40)
    d.add_argument("--n-test", type=int, default=40)
    d.add_argument("--size", type=int, default=224, help="patch size in pixels")
    d.add_argument("--mpp", type=float, default=0.5)
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=_dataset)
    # unset options take the sample slide's values (protoseg.data.synthetic.SAMPLE_SLIDE), read only when run
    s = kinds.add_parser(
        "slide",
        help="a small pyramidal TIFF section with its mask (<stem>_mask.png); "
        "the defaults make the plugin's sample slide",
    )
    s.add_argument("out")
    s.add_argument("--size", type=_size, default=None, help="WIDTHxHEIGHT (default: the sample slide's)")
    s.add_argument("--mpp", type=float, default=None, help="microns per pixel (default: the sample slide's)")
    s.add_argument("--seed", type=int, default=None, help="random seed (default: the sample slide's)")
    s.add_argument("--tile", type=int, default=None, help="TIFF tile size in px (default: the sample slide's)")
    s.set_defaults(func=_slide)
