"""``protoseg demo``: napari with the sample slide (``--headless`` writes screenshots and exits)."""

from __future__ import annotations

import argparse


def _run(args: argparse.Namespace) -> int:
    from protoseg.napari.demo import run_demo

    for path in run_demo(args.out, headless=args.headless):
        print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="open napari with the sample slide (and, later steps, training + overlays)")
    p.add_argument("--out", default="demo_out", help="folder for screenshots and demo outputs")
    p.add_argument("--headless", action="store_true", help="no window: write screenshots of each step and exit")
    p.set_defaults(func=_run)
