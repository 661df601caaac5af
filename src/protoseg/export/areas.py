"""Per-class tissue areas in mm² from a class mask, as rows and as a CSV table (written and read back)."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.export.errors import ExportError
from protoseg.outputs import written_by

#: Columns of the area table; ``written_by`` (``"protoseg <version>"`` in every row) marks protoseg's own
#: export, so that only such a file is replaced without ``--overwrite`` (``protoseg.export.replace``).
AREA_COLUMNS = ("class_index", "class", "pixels", "area_mm2", "tissue_fraction", "written_by")


@dataclass(frozen=True)
class AreaRow:
    """Area of one class: pixel count, mm², and share of the tissue (None for background)."""

    class_index: int
    name: str
    pixels: int
    area_mm2: float
    tissue_fraction: float | None


def count_classes(mask: Any, num_values: int, rows_per_block: int = 2048) -> np.ndarray:
    """Pixel count per value 0..num_values-1 of a 2-D array-like, read in row blocks (flat memory)."""
    h = mask.shape[0]
    counts = np.zeros(num_values, np.int64)
    for y in range(0, h, rows_per_block):
        block = np.asarray(mask[y : y + rows_per_block]).ravel()
        counts += np.bincount(block, minlength=256)[:num_values]
    return counts


def class_areas(mask: Any, mpp: float | None, classes: ClassSpec) -> list[AreaRow]:
    """Rows for every tissue class and background; ``mpp`` is um per mask pixel (required)."""
    if mpp is None or not mpp > 0:
        raise ExportError(
            "areas need the physical pixel size but the prediction has no mpp; re-run the prediction "
            "with --slide-mpp (the slide's microns per pixel)."
        )
    if len(mask.shape) != 2:
        raise ExportError(f"mask must be 2-D (H, W), got shape {mask.shape}")
    counts = count_classes(mask, classes.num_classes + 1)
    px_mm2 = (float(mpp) * 1e-3) ** 2
    tissue = int(counts[: classes.num_classes].sum())
    rows = []
    for i, name in enumerate([*classes.names, classes.background_name]):
        frac = None if i == classes.background_index else (counts[i] / tissue if tissue else 0.0)
        rows.append(AreaRow(i, name, int(counts[i]), float(counts[i]) * px_mm2, None if frac is None else float(frac)))
    return rows


def write_area_csv(rows: list[AreaRow], path: str | os.PathLike[str]) -> Path:
    """CSV with columns class_index, class, pixels, area_mm2, tissue_fraction, written_by."""
    path = Path(path)
    signature = written_by()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(AREA_COLUMNS)
            for r in rows:
                frac = "" if r.tissue_fraction is None else f"{r.tissue_fraction:.10g}"
                w.writerow([r.class_index, r.name, r.pixels, f"{r.area_mm2:.10g}", frac, signature])
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path.") from exc
    return path


def read_area_csv(path: str | os.PathLike[str]) -> list[AreaRow]:
    """Rows of a CSV written by :func:`write_area_csv` (tissue_fraction None for background; tables of older
    versions, without ``written_by``, read the same)."""
    path = Path(path)
    try:
        with path.open(newline="") as fh:
            return [
                AreaRow(
                    int(r["class_index"]),
                    r["class"],
                    int(r["pixels"]),
                    float(r["area_mm2"]),
                    float(r["tissue_fraction"]) if r["tissue_fraction"] else None,
                )
                for r in csv.DictReader(fh)
            ]
    except (OSError, KeyError, ValueError) as exc:
        raise ExportError(f"{path} is not a readable area table ({exc}); write it with the 'areas' export.") from exc
