"""Paper presets shipped with protoseg: partial run configs (YAML) that reproduce each method's settings.

``list_presets()`` names them (``pbip-bcss``, ``lpd-bcss``, ...), ``load_preset(name)`` gives the full
``ProtosegConfig`` (defaults < preset); every value in a preset file cites its source in a comment.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

import yaml

from protoseg.config import ConfigError, ProtosegConfig, merge_config

_SUFFIX = ".yaml"


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


def preset_dict(name: str) -> dict[str, Any]:
    """The preset's own (partial) settings as a mapping of sections."""
    try:
        data = yaml.safe_load(preset_text(name)) or {}
    except yaml.YAMLError as exc:
        raise PresetError(f"preset {name!r} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise PresetError(f"preset {name!r} must hold a mapping of sections")
    return data


def load_preset(name: str) -> ProtosegConfig:
    """The full run configuration of preset ``name``: protoseg defaults with the preset laid over them."""
    return merge_config(ProtosegConfig(), preset_dict(name))


__all__ = ["PresetError", "list_presets", "load_preset", "preset_description", "preset_dict", "preset_text"]
