"""``section.key=value`` overrides (values parsed as YAML) laid onto a config's plain mapping; old keys are
renamed or dropped through ``protoseg.config_compat``; ``protoseg.config`` passes in its ``ConfigError``."""

from __future__ import annotations

from typing import Any

import yaml

from protoseg.config_compat import removed_override, renamed_override


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def override_mapping(data: dict[str, Any], overrides: list[str], error: type[Exception]) -> dict[str, Any]:
    """``data`` (a whole config as plain mapping, changed in place) with the override strings applied; a
    malformed override or an unknown section or key raises ``error`` (the config's ConfigError)."""
    for item in overrides:
        if "=" not in item:
            raise error(f"override {item!r} must look like section.key=value (e.g. stage1.epochs=3)")
        key, raw = item.split("=", 1)
        key = renamed_override(key.strip())
        if removed_override(key):
            continue
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise error(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise error(f"override {item!r}: unknown key {parts[-1]!r}; valid: {sorted(node)}")
        node[parts[-1]] = _parse_scalar(raw)
    return data
