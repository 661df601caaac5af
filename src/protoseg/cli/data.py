"""``protoseg data check DIR``: open every patch and mask of a dataset folder and report bad files."""

from __future__ import annotations

import argparse


def _check(args: argparse.Namespace) -> int:
    from protoseg.cli.progress import progress_bar
    from protoseg.data.check import check_dataset

    with progress_bar("checking", unit="file", disable=args.quiet) as bar:

        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        report = check_dataset(args.dir, args.layout, progress=progress)
    print(report.format())
    return 0 if report.ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset tools (check a folder before training)")
    verbs = p.add_subparsers(dest="data_command", metavar="VERB", required=True)
    c = verbs.add_parser(
        "check",
        help="open every image and mask, count patches per class, name each bad file",
        description="Check a dataset folder the way training reads it; exit code 1 when a file is bad.",
    )
    c.add_argument("dir", metavar="DIR", help="dataset folder (BCSS-WSSS, LUAD-HistoSeg or generic layout)")
    c.add_argument("--layout", choices=["bcss_wsss", "luad_histoseg", "generic"], help="default: detected")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    c.set_defaults(func=_check)
