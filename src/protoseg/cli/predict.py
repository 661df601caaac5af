"""``protoseg predict``: slides -> OME-Zarr predictions (``protoseg export`` is in ``protoseg.cli.export``)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from protoseg.cli.args import float_in, int_at_least
from protoseg.config_ranges import MPP

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "predict",
        help="predict whole slides into OME-Zarr folders (resumable)",
        description="Predict each SLIDE with a checkpoint into OUT/<slide>.zarr (probabilities + mask pyramids).",
    )
    p.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files (.svs, .tif, .ndpi, .mrxs, ...)")
    p.add_argument("--checkpoint", "-c", required=True, help="checkpoint .pt written by `protoseg train`")
    p.add_argument("--out", "-o", required=True, help="output folder (one <slide>.zarr per slide)")
    p.add_argument("--scheduler", default=None, help="dask scheduler address (tcp://host:8786); default: local")
    p.add_argument(
        "--workers", type=int_at_least(1), default=1, help="local dask workers (processes); 1 = run in this process"
    )
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:N, mps")
    p.add_argument("--batch-size", type=int_at_least(1), default=16, help="tiles per model call")
    p.add_argument("--tta", action="store_true", help="average over flips (4x slower)")
    p.add_argument("--no-amp", action="store_true", help="disable mixed precision on CUDA")
    p.add_argument(
        "--slide-mpp", type=float_in(MPP), default=None, help="microns per pixel of the slide (when the file has none)"
    )
    p.add_argument("--no-tissue-only", action="store_true", help="predict background chunks too")
    p.add_argument("--chunk", type=int_at_least(16), default=512, help="chunk size of the output arrays (px)")
    p.add_argument("--overlap", type=int_at_least(0), default=None, help="tile overlap in px (default: tile size / 4)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace existing OUT/<slide>.zarr predictions instead of resuming them (default: resume a matching run); "
        "a folder holding files protoseg did not write is never replaced",
    )
    p.set_defaults(func=run_predict)


def _batch_options(args: argparse.Namespace) -> dict:
    return {
        "slide_mpp": args.slide_mpp,
        "tissue_only": not args.no_tissue_only,
        "chunk": args.chunk,
        "resume": not args.overwrite,
        "overwrite": args.overwrite,
    }


def _predictor_options(args: argparse.Namespace) -> dict:
    return {
        "device": args.device,
        "batch_size": args.batch_size,
        "tta": args.tta,
        "amp": not args.no_amp,
        "overlap": args.overlap,
    }


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.distributed import SlideOutcome, cluster_api, output_names, predict_many
    from protoseg.infer.errors import InferenceError
    from protoseg.infer.omezarr import check_output_parent
    from protoseg.infer.predictor import Predictor

    if args.batch_size < 1 or args.workers < 1:
        raise InferenceError("--batch-size and --workers must be >= 1")
    missing = [s for s in args.slides if not Path(s).exists()]
    if missing:
        raise InferenceError(f"slide(s) not found: {', '.join(missing)}")
    outcomes: list[SlideOutcome] = []
    if args.scheduler or args.workers > 1:
        cluster_api()  # the cluster extra is installed (else a one-line error before any progress bar)
        with tqdm(total=len(args.slides), unit="slide", desc="slides") as bar:

            def done(o: SlideOutcome) -> None:
                bar.update(1)
                bar.write(f"{'ok ' if o.ok else 'FAILED'} {o.slide} -> {o.output}" + ("" if o.ok else f": {o.error}"))

            outcomes = predict_many(
                args.slides,
                args.checkpoint,
                args.out,
                scheduler=args.scheduler,
                n_workers=args.workers,
                predictor_options=_predictor_options(args),
                on_result=done,
                **_batch_options(args),
            )
    else:
        check_output_parent(args.out)
        predictor = Predictor(args.checkpoint, **_predictor_options(args))
        for slide, out in zip(args.slides, output_names(args.slides, args.out)):
            with tqdm(total=0, unit="chunk", desc=Path(slide).name) as bar:

                def progress(done: int, total: int) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                try:
                    res = predict_slide_to_omezarr(predictor, slide, out, progress=progress, **_batch_options(args))
                except Exception as exc:
                    if len(args.slides) == 1:
                        raise
                    outcomes.append(SlideOutcome(str(slide), str(out), False, f"{type(exc).__name__}: {exc}"))
                    continue
            outcomes.append(
                SlideOutcome(str(slide), str(out), True, None, res.chunks_total, res.tiles_predicted, res.seconds)
            )
    failed = [o for o in outcomes if not o.ok]
    for o in outcomes:
        print(f"{'ok' if o.ok else 'FAILED'}\t{o.slide}\t{o.output}" + ("" if o.ok else f"\t{o.error}"))
    if failed:
        print(f"protoseg: {len(failed)} of {len(outcomes)} slides failed", file=sys.stderr)
        return 1
    return 0
