"""Keys of older configs and checkpoints: flat ``stage1`` keys moved into their sections, and keys that no
longer apply dropped, each with a warning; ``protoseg.config`` passes in its ``ConfigError``."""

from __future__ import annotations

import logging
from typing import Any

# The warnings are the config loader's: they keep its logger name (log filters, tests' caplog).
logger = logging.getLogger("protoseg.config")

#: Flat ``stage1`` keys of configs and checkpoints written before the sections existed -> new place.
STAGE1_RENAMED: dict[str, str] = {
    "sim_weight": "similarity.weight",
    "fg_weight": "similarity.fg_weight",
    "bg_weight": "similarity.bg_weight",
    "temperature": "similarity.temperature",
    "diversity_weight": "lpd.diversity_weight",
    "diversity_warmup_epochs": "lpd.diversity_warmup_epochs",
    "diversity_temperature": "lpd.diversity_temperature",
    "pscl_weight": "pscl.weight",
    "pscl_tau": "pscl.tau",
    "pscl_temperature": "pscl.temperature",
    "pscl_max_pixels": "pscl.max_pixels",
    "plim_weights": "plim.weights",
    "plim_template": "plim.template",
    "bg_threshold": "pseudo.bg_threshold",
    "bg_grey": "pseudo.bg_grey",
    "bg_min_size": "pseudo.bg_min_size",
}

#: Keys of older configs that no longer apply (dotted key -> why); they load with a warning and are dropped.
REMOVED_KEYS: dict[str, str] = {
    "model.background_score": "label-free stage-1 predictions take background from the glass detector, "
    "not from a constant CAM score",
    "stage1.pseudo.bg_threshold": "low-CAM pixels are no longer made background (they become ignore = 255 "
    "below stage1.pseudo.ignore_below)",
    "stage1.pseudo.bg_grey": "background now comes from the adaptive glass detector "
    "(stage1.pseudo.glass, bg_open_radius, bg_min_size)",
}


def _warn_renamed(pairs: list[tuple[str, str]]) -> None:
    logger.warning(
        "deprecated config key(s) %s; they still work, but write them as %s",
        ", ".join(old for old, _ in pairs),
        ", ".join(new for _, new in pairs),
    )


def upgrade_keys(data: dict[str, Any], renamed: dict[str, str], where: str, error: type[Exception]) -> dict[str, Any]:
    """Move old flat keys into their sections (``bg_threshold`` -> ``pseudo.bg_threshold``), logging it;
    a key set both ways, or a section that is not a mapping, raises ``error`` (the config's ConfigError)."""
    old = [k for k in data if k in renamed]
    if not old:
        return data
    out = {k: v for k, v in data.items() if k not in renamed}
    for key in old:
        section, name = renamed[key].split(".")
        node = out.get(section, {})
        if not isinstance(node, dict):
            raise error(f"{where}{section}: expected a mapping, got {node!r}")
        if name in node:
            raise error(f"both {where}{key} (deprecated) and {where}{renamed[key]} are set; keep only the second")
        out[section] = {**node, name: data[key]}
    _warn_renamed([(f"{where}{k}", f"{where}{renamed[k]}") for k in old])
    return out


def drop_removed(data: dict[str, Any], where: str) -> dict[str, Any]:
    """``data`` (the mapping at dotted prefix ``where``) without its ``REMOVED_KEYS``, warning for each."""
    gone = [k for k in data if f"{where}{k}" in REMOVED_KEYS]
    for k in gone:
        logger.warning("config key %s%s no longer applies and is ignored: %s", where, k, REMOVED_KEYS[f"{where}{k}"])
    return {k: v for k, v in data.items() if k not in gone} if gone else data


def renamed_override(key: str) -> str:
    """``stage1.bg_threshold`` -> ``stage1.pseudo.bg_threshold`` (old flat keys keep working, with a warning)."""
    section, _, name = key.partition(".")
    renamed = {"stage1": STAGE1_RENAMED}.get(section, {})
    if name in renamed:
        new = f"{section}.{renamed[name]}"
        _warn_renamed([(key, new)])
        return new
    return key


def removed_override(key: str) -> bool:
    """True (with a warning) when the dotted override ``key`` names a setting that no longer applies."""
    if key in REMOVED_KEYS:
        logger.warning("override %s no longer applies and is ignored: %s", key, REMOVED_KEYS[key])
        return True
    return False
