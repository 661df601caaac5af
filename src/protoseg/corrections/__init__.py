"""Pixel corrections painted (or drawn in QuPath) on a slide at a model's resolution: a chunked zarr store
protoseg owns (``store``), QuPath GeoJSON in and out (``geojson``). Qt-free; retraining lives in
``protoseg.train.retrain``."""

from __future__ import annotations

from protoseg.corrections.errors import CorrectionsError
from protoseg.corrections.store import (
    CORRECTIONS_SUFFIX,
    CorrectionStore,
    create_corrections,
    default_corrections_path,
    is_corrections_store,
    open_corrections,
    open_or_create_corrections,
)

__all__ = [
    "CORRECTIONS_SUFFIX",
    "CorrectionStore",
    "CorrectionsError",
    "create_corrections",
    "default_corrections_path",
    "is_corrections_store",
    "open_corrections",
    "open_or_create_corrections",
]
