"""The OME-Zarr "export": a copy of a finished batch prediction folder to a new (or empty) folder."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protoseg.export.errors import ExportError


def copy_prediction(zarr_path: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Copy the prediction folder ``zarr_path`` to ``out``; returns ``out``.

    The source must be a finished protoseg prediction; ``out`` must not exist or be an empty folder
    (never merged into a foreign folder). Copying a folder onto itself does nothing.
    """
    from protoseg.infer.omezarr import open_prediction

    src, out = Path(zarr_path), Path(out)
    if not open_prediction(src).complete:
        raise ExportError(f"{src} is an unfinished prediction; run the prediction again (it resumes) first.")
    if out.resolve() == src.resolve():
        return out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ExportError(f"{out} already exists and is not empty; choose a new folder name (e.g. ending .zarr)")
    try:
        shutil.copytree(src, out, dirs_exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot copy the prediction to {out} ({exc}); choose a writable location.") from exc
    return out
