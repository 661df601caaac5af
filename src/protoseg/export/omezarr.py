"""The OME-Zarr "export": a copy of a finished batch prediction folder to a new folder (or over a prediction
folder protoseg wrote), written beside it and renamed into place."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from protoseg.export.errors import ExportError


def copy_prediction(zarr_path: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """Copy the prediction folder ``zarr_path`` to ``out``; returns ``out``.

    The source must be a finished, undamaged protoseg prediction; ``out`` must be free, empty or a
    prediction folder protoseg wrote (with ``overwrite`` also another protoseg output; never a file or a folder
    holding anything else). Copying a folder onto itself does nothing.
    """
    from protoseg.infer.errors import OutputError
    from protoseg.infer.omezarr import OUTPUT_KIND, check_finished, is_prediction_dir, open_prediction
    from protoseg.outputs import replace_dir

    src, out = Path(zarr_path), Path(out)
    try:
        check_finished(open_prediction(src))
    except OutputError as exc:
        raise ExportError(str(exc)) from exc
    if out.resolve() == src.resolve():
        return out
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file; choose a folder name (e.g. ending .zarr) for the OME-Zarr copy")
    is_prediction_dir(out)  # marks an older unmarked protoseg prediction as replaceable
    try:
        with replace_dir(out, OUTPUT_KIND, overwrite=overwrite) as tmp:
            shutil.copytree(src, tmp, dirs_exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot copy the prediction to {out} ({exc}); choose a writable location.") from exc
    return out
