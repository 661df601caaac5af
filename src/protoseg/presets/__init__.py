"""Paper presets shipped with protoseg: partial run configs (YAML) that reproduce each method's settings.

``list_presets()`` names them (``pbip-bcss``, ``lpd-bcss``, ...), ``load_preset(name)`` gives the full
``ProtosegConfig`` (defaults < preset); every value in a preset file cites its source in a comment.

A preset names a method and its hyper-parameters, never the data: it sets no ``data.root`` or
``data.layout``, so it works with any layout (generic, BCSS-WSSS, LUAD-HistoSeg). Its top-level
``classes`` key only records the classes it was written for; given the data's classes,
``load_preset(name, classes)`` drops the class-specific values that do not apply and logs one line saying
what it changed (``preset_changes``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from typing import Any

import yaml

from protoseg.classes import ClassSpec
from protoseg.config import ConfigError, ProtosegConfig, merge_config

logger = logging.getLogger(__name__)

_SUFFIX = ".yaml"
#: Top-level key naming the classes a preset was written for (metadata, not a config section).
CLASSES_KEY = "classes"
#: Data settings a preset must not carry: they belong to the dataset, not to the method.
DATA_KEYS = ("root", "layout")


class PresetError(ConfigError):
    """An unknown preset name, or a preset file that does not parse."""


def _files() -> dict[str, Any]:
    root = resources.files(__name__)
    return {p.name[: -len(_SUFFIX)]: p for p in root.iterdir() if p.name.endswith(_SUFFIX)}


def list_presets() -> list[str]:
    """Names of the shipped presets, sorted (e.g. ``["lpd-bcss", "pbip-bcss", ...]``)."""
    return sorted(_files())


def _resource(name: str) -> Any:
    files = _files()
    if name not in files:
        raise PresetError(f"unknown preset {name!r}; available presets: {', '.join(sorted(files))}")
    return files[name]


def preset_text(name: str) -> str:
    """The YAML text of preset ``name`` (comments included: they cite where each value comes from)."""
    return _resource(name).read_text(encoding="utf-8")


def preset_description(name: str) -> str:
    """The first comment line of the preset file (what the preset reproduces)."""
    for line in preset_text(name).splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip()
    return name


def _raw(name: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(preset_text(name)) or {}
    except yaml.YAMLError as exc:
        raise PresetError(f"preset {name!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PresetError(f"preset {name!r} must hold a mapping of sections")
    forced = [f"data.{k}" for k in DATA_KEYS if k in (data.get("data") or {})]
    if forced:
        raise PresetError(f"preset {name!r} sets {', '.join(forced)}: a preset names a method, not the data; remove it")
    return data


def preset_dict(name: str) -> dict[str, Any]:
    """The preset's own (partial) settings as a mapping of sections (without its ``classes`` record)."""
    return {k: v for k, v in _raw(name).items() if k != CLASSES_KEY}


def preset_classes(name: str) -> tuple[str, ...]:
    """The classes preset ``name`` was written for (e.g. ``("TE", "NEC", "LYM", "TAS")``); empty if unrecorded."""
    return tuple(str(c) for c in _raw(name).get(CLASSES_KEY) or ())


def _fit_descriptions(settings: dict[str, Any], classes: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
    """Drop ``stage1.plim.descriptions`` items of classes the data does not have; notes on what was dropped."""
    plim = (settings.get("stage1") or {}).get("plim") or {}
    items = [str(d) for d in plim.get("descriptions") or ()]
    keep = [d for d in items if d.split("=", 1)[0].strip().upper() in {c.upper() for c in classes}]
    if len(keep) == len(items):
        return settings, []
    dropped = [d.split("=", 1)[0].strip() for d in items if d not in keep]
    stage1 = {**settings["stage1"], "plim": {**plim, "descriptions": keep}}
    return {**settings, "stage1": stage1}, [f"drops stage1.plim.descriptions of {', '.join(dropped)}"]


def preset_changes(name: str, classes: Sequence[str]) -> tuple[dict[str, Any], str | None]:
    """Preset ``name``'s settings fitted to a dataset's ``classes``, and one line saying what that changed
    (None when the preset was written for these classes)."""
    settings, written_for = preset_dict(name), preset_classes(name)
    if not written_for or tuple(written_for) == tuple(classes):
        return settings, None
    settings, notes = _fit_descriptions(settings, classes)
    missing = [c for c in written_for if c not in classes]
    new = [c for c in classes if c not in written_for]
    what = [f"{len(classes)} classes instead of {len(written_for)}" if len(classes) != len(written_for) else ""]
    what += [f"not in the data: {', '.join(missing)}" if missing else "", f"new: {', '.join(new)}" if new else ""]
    line = (
        f"preset {name} was written for classes {', '.join(written_for)}; the data has {', '.join(classes)}: "
        f"the method and hyper-parameters are the preset's, the classes come from the data "
        f"({'; '.join(w for w in what if w) or 'same classes, another order'}){''.join('; it ' + n for n in notes)}"
    )
    return settings, line


def load_preset(name: str, classes: ClassSpec | Sequence[str] | None = None) -> ProtosegConfig:
    """The full run configuration of preset ``name``: protoseg defaults with the preset laid over them;
    with the data's ``classes``, fitted to them and the change logged once (``preset_changes``)."""
    if classes is None:
        return merge_config(ProtosegConfig(), preset_dict(name))
    names = classes.names if isinstance(classes, ClassSpec) else tuple(classes)
    settings, line = preset_changes(name, names)
    if line:
        logger.info("%s", line)
    return merge_config(ProtosegConfig(), settings)


__all__ = [
    "PresetError",
    "list_presets",
    "load_preset",
    "preset_changes",
    "preset_classes",
    "preset_description",
    "preset_dict",
    "preset_text",
]
