"""The ``protoseg`` command: one sub-command module per job, each registering its own parser."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from protoseg.errors import ProtosegError

logger = logging.getLogger("protoseg.cli")

#: Sub-command modules; each defines ``register(subparsers) -> None`` and sets ``func`` on its parsers.
COMMAND_MODULES: tuple[str, ...] = (
    "protoseg.cli.synth",
    "protoseg.cli.data",
    "protoseg.cli.bank",
    "protoseg.cli.train",
    "protoseg.cli.presets",
    "protoseg.cli.pseudo",
    "protoseg.cli.evaluate",
    "protoseg.cli.predict",
    "protoseg.cli.export",
    "protoseg.cli.demo",
)


USER_DESCRIPTION = """\
Tissue segmentation of H&E whole-slide images from image-level labels (weak supervision).

Train a model on labelled patches, predict class maps for whole slides, and export them for QuPath
or as area tables. The same steps are available in napari (Plugins > protoseg)."""

USER_EPILOG = """\
typical workflow:
  protoseg data check DATA                        check a patch dataset before training
  protoseg train stage1 --data DATA --out RUN     stage 1: class activation maps from image labels
  protoseg pseudo --data DATA --checkpoint RUN/stage1/best.pt --out RUN/pseudo
  protoseg train stage2 --data DATA --out RUN     stage 2: segmentation network on the pseudo-masks
  protoseg predict SLIDE.svs --checkpoint RUN/stage2/best.pt --out PRED
  protoseg export PRED/SLIDE.zarr --format geojson    outlines for QuPath (also ome-tiff, areas)

Run `protoseg COMMAND --help` for the options of a command; `protoseg demo` opens the viewer on a
sample slide. Training settings: --preset NAME, --config FILE.yaml and --set section.key=value."""


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(
        prog="protoseg",
        description=USER_DESCRIPTION,
        epilog=USER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-v progress details, -vv debug)"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # sub-command not part of this build
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; library errors become a one-line message and exit code 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(int(args.verbose) + 1, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except (ProtosegError, OSError) as exc:  # one line, once; the traceback only with -vv
        logger.debug("traceback of the error below", exc_info=True)
        print(f"protoseg: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("protoseg: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    """The error message on one line (OS errors name the file: "No such file or directory: 'x.svs'")."""
    if isinstance(exc, OSError) and not isinstance(exc, ProtosegError) and exc.strerror:
        text = f"{exc.strerror}: {exc.filename!r}" if exc.filename else exc.strerror
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


if __name__ == "__main__":
    sys.exit(main())
