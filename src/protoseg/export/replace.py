"""Which existing export files may be replaced: only a file protoseg wrote in the same format, unless the
user asked (``overwrite``); the new file is written beside it and renamed over it (``protoseg.outputs``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from protoseg.export.errors import ExportError
from protoseg.outputs import OutputOwnershipError, atomic_write

AREA_HEADER = "class_index,class,pixels,area_mm2,tissue_fraction"


def _is_ometiff_mask(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return "class-index mask" in (tif.pages[0].description or "")
    except Exception:  # noqa: BLE001 - anything unreadable is not ours
        return False


def _is_area_csv(path: Path) -> bool:
    try:
        with path.open(encoding="utf-8") as fh:
            return fh.readline().strip() == AREA_HEADER
    except (OSError, UnicodeDecodeError):
        return False


def _is_geojson_export(path: Path) -> bool:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    if not isinstance(doc, dict) or doc.get("type") != "FeatureCollection" or not isinstance(doc.get("features"), list):
        return False
    return all(
        isinstance(f, dict) and isinstance(f.get("properties"), dict) and "class_index" in f["properties"]
        for f in doc["features"]
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
