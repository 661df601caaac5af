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

    root = write_bcss_dataset(args.out, n_train=args.n_train, n_val=args.n_val, n_test=args.n_test,
                              size=args.size, seed=args.seed, mpp=args.mpp)
    print(root)
    return 0


def _slide(args: argparse.Namespace) -> int:
    from protoseg.data.synthetic.writers import write_synthetic_slide

    s = write_synthetic_slide(args.out, size=args.size, mpp=args.mpp, seed=args.seed, tile_size=args.tile)
    print(s.path)
    print(s.mask_path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from protoseg.napari.sample import SAMPLE_MPP, SAMPLE_SEED, SAMPLE_SIZE

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
    s = kinds.add_parser("slide", help="a small pyramidal TIFF section with its mask (<stem>_mask.png)")
    s.add_argument("out")
    s.add_argument("--size", type=_size, default=SAMPLE_SIZE, help="WIDTHxHEIGHT")
    s.add_argument("--mpp", type=float, default=SAMPLE_MPP)
    s.add_argument("--seed", type=int, default=SAMPLE_SEED)
    s.add_argument("--tile", type=int, default=256)
    s.set_defaults(func=_slide)
