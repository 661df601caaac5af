"""QuPath's GeoJSON object properties, shared by the region files and the mask exports.

- ``objectType``: ``"annotation"`` (editable regions) or ``"detection"`` (many small, read-only objects).
- ``classification``: ``{"name": "TUM", "color": [r, g, b]}``; an object tagged with several classes is
  QuPath's *derived class* ``{"name": "EPI: STR", "names": ["EPI", "STR"], "color": ...}`` (QuPath splits
  ``name`` at ``:``; ``names`` keeps the list for readers that take it). Both forms are read back.
- ``measurements``: ``{"Area µm^2": ..., "Perimeter µm": ...}`` (QuPath's own names; ``px`` units when the
  resolution is unknown), computed by shapely from the written geometry (perimeter: all rings).
- ``id``: a UUID derived from the object itself (uuid5 of slide, classes and coordinates), so the same
  object exported twice keeps its id and QuPath matches it.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from enum import StrEnum
from typing import Any

#: QuPath's separator of the parts of a derived class ("EPI: STR").
DERIVED_SEPARATOR = ": "
#: Namespace of protoseg's object ids (uuid5 of it and the object's slide, classes and coordinates).
ID_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "protoseg:qupath-object")
AREA_UM2, PERIMETER_UM = "Area µm^2", "Perimeter µm"
AREA_PX2, PERIMETER_PX = "Area px^2", "Perimeter px"


class ObjectType(StrEnum):
    """QuPath object type of exported features (``properties.objectType``)."""

    ANNOTATION = "annotation"
    DETECTION = "detection"


def classification(names: Sequence[str], color: Sequence[int] | None = None) -> dict[str, Any]:
    """QuPath ``classification`` of an object tagged with ``names``: one class, or the derived class of several."""
    out: dict[str, Any] = {"name": DERIVED_SEPARATOR.join(names)}
    if len(names) > 1:
        out["names"] = list(names)
    if color is not None:
        out["color"] = [int(c) for c in color]
    return out


def split_derived(name: str) -> tuple[str, ...]:
    """The parts of a QuPath class name: ``"EPI: STR"`` -> ``("EPI", "STR")`` (as QuPath splits it)."""
    return tuple(part.strip() for part in name.split(":") if part.strip())


def measurements(geometry: Any, mpp: float | None = None) -> dict[str, float]:
    """Area and perimeter of a shapely geometry (or GeoJSON geometry dict) in µm, or px without ``mpp``."""
    import shapely
    from shapely.geometry import shape

    geom = shape(geometry) if isinstance(geometry, dict) else geometry
    area, length = float(shapely.area(geom)), float(shapely.length(geom))
    if mpp:
        return {AREA_UM2: round(area * mpp * mpp, 3), PERIMETER_UM: round(length * mpp, 3)}
    return {AREA_PX2: round(area, 3), PERIMETER_PX: round(length, 3)}


def stable_ids(keys: Iterable[str]) -> list[str]:
    """One UUID per key, derived from the key (uuid5); a repeated key gets its occurrence number mixed in."""
    seen: dict[str, int] = {}
    out = []
    for key in keys:
        n = seen.get(key, 0)
        seen[key] = n + 1
        out.append(str(uuid.uuid5(ID_NAMESPACE, key if n == 0 else f"{key}#{n}")))
    return out


def object_key(slide: str, names: Sequence[str], coordinates: Any) -> str:
    """The text an object's id is derived from: its slide, classes and (output) coordinates."""
    return json.dumps([str(slide), list(names), coordinates], separators=(",", ":"))
