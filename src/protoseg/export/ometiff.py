"""Class-index masks as pyramidal OME-TIFF (tifffile, SubIFD pyramid), readable by QuPath/napari/OMERO.

Pixels are uint8 class indices exactly as in the prediction (classes 0..C-1, background C), with
no colour lookup table (a palette would make viewers show colours instead of the indices that
analyses need); class names and colours go into the OME ``Description`` as JSON. Physical pixel
size (um) is in the OME-XML and in the TIFF resolution tags. Written tile row by tile row, so
memory stays at one strip of tiles however large the mask.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.export.errors import ExportError

logger = logging.getLogger(__name__)

#: ``"protoseg"`` value of the ``Description`` JSON: protoseg's own mark on its mask exports.
OMETIFF_MARK = "class-index mask"


def _tiles(level: Any, tile: int) -> Iterator[np.ndarray]:
    h, w = level.shape
    for y in range(0, h, tile):
        strip = np.asarray(level[y : y + tile, :], dtype=np.uint8)
        for x in range(0, w, tile):
            block = strip[:, x : x + tile]
            if block.shape != (tile, tile):
                padded = np.zeros((tile, tile), np.uint8)
                padded[: block.shape[0], : block.shape[1]] = block
                block = padded
            yield np.ascontiguousarray(block)


def write_mask_ometiff(
    levels: Sequence[Any] | np.ndarray,
    path: str | os.PathLike[str],
    mpp: float | None,
    classes: ClassSpec,
    tile: int = 256,
    compression: str = "zlib",
) -> Path:
    """Write a mask pyramid (level 0 first, each level an (H, W) uint8 array-like) as OME-TIFF.

    A single 2-D array is written as a one-level file. ``mpp`` (um per level-0 pixel) may be None:
    the file then carries no physical size.
    """
    import tifffile

    if isinstance(levels, np.ndarray):
        levels = [levels]
    levels = list(levels)
    if not levels or any(len(lv.shape) != 2 for lv in levels):
        raise ExportError("write_mask_ometiff needs one or more 2-D (H, W) class-index arrays")
    if tile % 16:
        raise ExportError(f"TIFF tile size must be a multiple of 16, got {tile}")
    path = Path(path)
    info = {
        "protoseg": OMETIFF_MARK,
        "classes": [*classes.names, classes.background_name],
        "colors": [list(c) for c in classes.palette()],
        "background_index": classes.background_index,
    }
    meta: dict[str, Any] = {"axes": "YX", "Name": "protoseg mask", "Description": json.dumps(info)}
    if mpp is not None:
        meta.update(PhysicalSizeX=mpp, PhysicalSizeXUnit="µm", PhysicalSizeY=mpp, PhysicalSizeYUnit="µm")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
            for k, lv in enumerate(levels):
                kw: dict[str, Any] = dict(
                    shape=tuple(lv.shape),
                    dtype=np.uint8,
                    tile=(tile, tile),
                    photometric="minisblack",
                    compression=compression,
                )
                if mpp is not None:
                    kw.update(resolution=(1e4 / (mpp * 2**k), 1e4 / (mpp * 2**k)), resolutionunit="CENTIMETER")
                if k == 0:
                    tif.write(_tiles(lv, tile), subifds=len(levels) - 1, metadata=meta, **kw)
                else:
                    tif.write(_tiles(lv, tile), subfiletype=1, metadata=None, **kw)
    except OSError as exc:
        raise ExportError(f"cannot write {path} ({exc.strerror or exc}); choose a writable path.") from exc
    logger.info("wrote %s (%d levels)", path, len(levels))
    return path
