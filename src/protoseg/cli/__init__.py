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


def build_parser() -> argparse.ArgumentParser:
    """Top-level parser with every available sub-command."""
    parser = argparse.ArgumentParser(prog="protoseg", description=__doc__)
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
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
    except ProtosegError as exc:
        logger.error("%s", exc)
        print(f"protoseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("protoseg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
