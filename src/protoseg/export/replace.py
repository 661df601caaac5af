"""Which existing export files may be replaced: only a file protoseg wrote in the same format, unless the
user asked (``overwrite``); the new file is written beside it and renamed over it (``protoseg.outputs``)."""

from __future__ import annotations

import csv
import itertools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from protoseg.export.areas import AREA_COLUMNS
from protoseg.export.errors import ExportError
from protoseg.export.ometiff import OMETIFF_MARK
from protoseg.outputs import OutputOwnershipError, atomic_write, is_marker, marker_info

#: Where a GeoJSON export carries protoseg's marker (a foreign member, which GeoJSON readers ignore).
GEOJSON_MARKER_KEY = "protoseg"
GEOJSON_KIND = "geojson-export"
_MAX_AREA_ROWS = 256  # classes + background fit in uint8 masks


def sign_geojson(collection: dict[str, Any]) -> dict[str, Any]:
    """``collection`` with protoseg's marker (``{"kind": "geojson-export", "version": ...}``) added."""
    return {**collection, GEOJSON_MARKER_KEY: marker_info(GEOJSON_KIND)}


def _is_ometiff_mask(path: Path) -> bool:
    """An OME-TIFF whose OME ``Description`` is the JSON the mask writer records."""
    import xml.etree.ElementTree as ET

    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            xml = tif.pages[0].description or ""
        for node in ET.fromstring(xml).iter():
            if node.tag.rsplit("}", 1)[-1] == "Description" and node.text:
                info = json.loads(node.text)
                return isinstance(info, dict) and info.get("protoseg") == OMETIFF_MARK
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False
    return False


def _is_area_csv(path: Path) -> bool:
    """The area table header followed by 1..256 rows, each signed ``protoseg <version>`` (``written_by``)."""
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            if next(reader, None) != list(AREA_COLUMNS):
                return False
            rows = list(itertools.islice(reader, _MAX_AREA_ROWS + 1))
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return 0 < len(rows) <= _MAX_AREA_ROWS and all(
        len(r) == len(AREA_COLUMNS) and r[-1].startswith("protoseg ") for r in rows
    )


def _is_geojson_export(path: Path) -> bool:
    """A FeatureCollection carrying protoseg's marker (``sign_geojson``); its features prove nothing."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return (
        isinstance(doc, dict)
        and doc.get("type") == "FeatureCollection"
        and is_marker(doc.get(GEOJSON_MARKER_KEY), GEOJSON_KIND)
    )


#: Recognisers of files written by each file export (keyed by ``ExportFormat`` value).
RECOGNISERS: dict[str, Callable[[Path], bool]] = {
    "ome-tiff": _is_ometiff_mask,
    "areas": _is_area_csv,
    "geojson": _is_geojson_export,
}


def check_file_output(path: str | os.PathLike[str], fmt: str, overwrite: bool = False) -> None:
    """Raise unless ``path`` is free, a ``fmt`` export protoseg wrote, or ``overwrite`` was asked."""
    path = Path(path)
    if not path.exists():
        return
    if path.is_dir():
        raise ExportError(f"export target {path} is a folder; give a file path (e.g. ending {_suffix(fmt)})")
    if overwrite or RECOGNISERS[fmt](path):
        return
    raise OutputOwnershipError(
        f"export target {path} exists and is not a protoseg {fmt} export; choose a new path, "
        "or pass --overwrite (overwrite=True) to replace it."
    )


def _suffix(fmt: str) -> str:
    return {"ome-tiff": ".ome.tif", "areas": ".csv", "geojson": ".geojson"}.get(fmt, "")


def write_file_export(path: str | os.PathLike[str], fmt: str, write: Callable[[Path], object], overwrite: bool) -> Path:
    """``check_file_output``, then ``write(tmp)`` beside ``path`` and rename it over ``path`` (atomic)."""
    check_file_output(path, fmt, overwrite)
    try:
        return atomic_write(path, lambda tmp: write(tmp))
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path.") from exc
