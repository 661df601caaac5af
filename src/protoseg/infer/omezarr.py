"""On-disk layout of batch predictions: an OME-Zarr (NGFF 0.5, zarr v3) folder.

```
<out>.zarr/            root group; attrs["protoseg"] = classes, mpp, slide, layout, completion
  probs/0..L-1         uint8 (C+1, H, W) scores*255, chunks (C+1, chunk, chunk); NGFF multiscales
                       + omero channel names/colours
  mask/0..L-1          uint8 (H, W) class indices (background = C); NGFF multiscales + image-label
                       colours/names
  done                 uint8 (rows, cols): 1 once a level-0 chunk is written (resume record)
```
Level k has pixel size mpp * 2**k micrometre.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protoseg.classes import ClassSpec
from protoseg.infer.errors import OutputError

logger = logging.getLogger(__name__)

FORMAT = "protoseg-prediction"
FORMAT_VERSION = 1
NGFF_VERSION = "0.5"


def _hex(rgb: tuple[int, int, int] | list[int]) -> str:
    return "".join(f"{int(v):02X}" for v in rgb)


def _multiscales(name: str, levels: int, mpp: float | None, channel_axis: bool) -> list[dict[str, Any]]:
    unit = {"unit": "micrometer"} if mpp is not None else {}
    axes = [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]
    if channel_axis:
        axes.insert(0, {"name": "c", "type": "channel"})
    step = 1.0 if mpp is None else float(mpp)
    datasets = []
    for k in range(levels):
        s = step * 2**k
        scale = [1.0, s, s] if channel_axis else [s, s]
        datasets.append({"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": scale}]})
    return [{"name": name, "axes": axes, "datasets": datasets}]


def check_output_dir(path: str | os.PathLike[str]) -> bool:
    """Create/validate the output folder; True when it already holds a protoseg prediction.

    Raises ``OutputError`` when it cannot be written or holds anything else (never deletes).
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is a file; choose a folder path such as {path}.zarr")
    existing = path.is_dir() and any(path.iterdir())
    if existing and read_protoseg_attrs(path) is None:
        raise OutputError(
            f"output folder {path} already contains other files and is not a protoseg prediction; "
            "choose a new or empty folder (nothing was changed)."
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".protoseg-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {path} ({exc.strerror or exc}); choose a writable location "
            "or fix its permissions."
        ) from exc
    return bool(existing)


def read_protoseg_attrs(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``protoseg`` attributes of a prediction folder, or None if it is not one."""
    meta = Path(path) / "zarr.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    attrs = doc.get("attributes", {}).get("protoseg") if isinstance(doc, dict) else None
    if not isinstance(attrs, dict) or attrs.get("format") != FORMAT:
        return None
    return attrs


def create_prediction_zarr(
    path: str | os.PathLike[str], classes: ClassSpec, layout: dict[str, Any], slide: str, overwrite: bool = False
) -> Any:
    """Create the folder structure and metadata; returns the root zarr group."""
    import zarr

    mpp = layout["mpp"]
    chunk = int(layout["chunk"])
    levels = [tuple(s) for s in layout["levels"]]
    channels = classes.num_classes + 1
    root = zarr.open_group(str(path), mode="w" if overwrite else "w-", zarr_format=3)
    probs = root.create_group("probs")
    mask = root.create_group("mask")
    for k, (w, h) in enumerate(levels):
        probs.create_array(
            str(k),
            shape=(channels, h, w),
            chunks=(channels, chunk, chunk),
            dtype="uint8",
            fill_value=0,
            dimension_names=("c", "y", "x"),
        )
        mask.create_array(
            str(k),
            shape=(h, w),
            chunks=(chunk, chunk),
            dtype="uint8",
            fill_value=classes.num_classes,
            dimension_names=("y", "x"),
        )
    rows, cols = -(-levels[0][1] // chunk), -(-levels[0][0] // chunk)
    root.create_array(
        "done", shape=(rows, cols), chunks=(min(rows, 1024), min(cols, 1024)), dtype="uint8", fill_value=0
    )
    names = [*classes.names, classes.background_name]
    palette = classes.palette()
    probs.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales("probs", len(levels), mpp, True),
        "omero": {
            "channels": [
                {"label": n, "color": _hex(c), "active": True, "window": {"min": 0, "max": 255, "start": 0, "end": 255}}
                for n, c in zip(names, palette)
            ],
            "rdefs": {"model": "color"},
        },
    }
    mask.attrs["ome"] = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales("mask", len(levels), mpp, False),
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": i, "rgba": [*c, 255]} for i, c in enumerate(palette)],
            "properties": [{"label-value": i, "name": n} for i, n in enumerate(names)],
        },
    }
    root.attrs["protoseg"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": classes.to_dict(),
        "mpp": mpp,
        "slide": slide,
        "layout": layout,
        "complete": False,
        "pyramid_complete": False,
    }
    return root


@dataclass(frozen=True)
class PredictionZarr:
    """An opened prediction folder: metadata plus per-level zarr arrays."""

    path: Path
    group: Any
    classes: ClassSpec
    mpp: float | None
    attrs: dict[str, Any]

    @property
    def num_levels(self) -> int:
        return len(self.attrs["layout"]["levels"])

    @property
    def complete(self) -> bool:
        return bool(self.attrs.get("complete")) and bool(self.attrs.get("pyramid_complete"))

    @property
    def scale(self) -> float:
        """Level-0 slide pixels per level-0 prediction pixel."""
        return float(self.attrs["layout"]["scale"])

    def probs(self, level: int = 0) -> Any:
        return self.group["probs"][str(level)]

    def mask(self, level: int = 0) -> Any:
        return self.group["mask"][str(level)]

    def level_mpp(self, level: int) -> float | None:
        return None if self.mpp is None else self.mpp * 2**level


def open_prediction(path: str | os.PathLike[str], mode: str = "r") -> PredictionZarr:
    """Open a folder written by ``predict_slide_to_omezarr``; clear error if it is not one."""
    import zarr

    path = Path(path)
    attrs = read_protoseg_attrs(path)
    if attrs is None:
        raise OutputError(f"{path} is not a protoseg prediction (OME-Zarr written by `protoseg predict`).")
    group = zarr.open_group(str(path), mode=mode, zarr_format=3)
    return PredictionZarr(path, group, ClassSpec.from_dict(attrs["classes"]), attrs.get("mpp"), attrs)
