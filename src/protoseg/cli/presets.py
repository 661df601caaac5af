"""``protoseg presets``: list the paper presets shipped with protoseg (``--show NAME`` prints one)."""

from __future__ import annotations

import argparse

from protoseg.presets import list_presets, preset_description, preset_text


def _run(args: argparse.Namespace) -> int:
    if args.show:
        print(preset_text(args.show), end="")
        return 0
    names = list_presets()
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {preset_description(name)}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "presets",
        help="list the paper presets (use one with `protoseg train stage1 --preset NAME`)",
        description="Paper presets: run configs that reproduce each method's hyper-parameters, with sources.",
    )
    p.add_argument("--show", metavar="NAME", choices=list_presets(), help="print the preset's YAML with its comments")
    p.set_defaults(func=_run)
