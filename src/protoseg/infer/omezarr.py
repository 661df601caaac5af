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
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protoseg import outputs
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


#: The ``protoseg.outputs`` marker kind of a prediction folder.
OUTPUT_KIND = "prediction"
_ZARR_ENTRIES = frozenset({"zarr.json", "probs", "mask", "done"})


def _adopt_legacy(path: Path) -> None:
    """Mark a prediction written before output markers listed their entries (protoseg attrs, only its own
    entries) as ours."""
    outputs.adopt_legacy(path, OUTPUT_KIND, _ZARR_ENTRIES, lambda p: read_protoseg_attrs(p) is not None)


def is_prediction_dir(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a prediction folder protoseg wrote (marked, or an unmarked older one)."""
    path = Path(path)
    _adopt_legacy(path)
    return outputs.owned_by(path, OUTPUT_KIND) and read_protoseg_attrs(path) is not None


def _probe_writable(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".protoseg-write-test.{os.getpid()}.tmp"  # a protoseg temporary if left by a crash
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write to output folder {path} ({exc.strerror or exc}); choose a writable location "
            "or fix its permissions."
        ) from exc


def check_output_parent(path: str | os.PathLike[str]) -> Path:
    """The folder that receives one ``<slide>.zarr`` per slide: created if needed, must be a writable folder
    (what else it holds is the user's business: only the per-slide folders are checked)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {path} exists and is a file; pass a folder for the <slide>.zarr outputs")
    _probe_writable(path)
    return path


def check_output_dir(path: str | os.PathLike[str], overwrite: bool = False) -> bool:
    """Create/validate the output folder; True when it already holds something to resume or replace.

    Only a folder holding nothing but protoseg's own outputs passes (``protoseg.outputs.check_replaceable``;
    another kind of output only with ``overwrite``); a file, or a folder with anything else in it, raises
    ``OutputError`` naming a foreign file, ``overwrite`` or not (nothing is changed).
    """
    path = Path(path)
    is_prediction_dir(path)  # marks an older unmarked protoseg prediction as ours
    outputs.migrate_zarr_marker(path)  # an older marker file moves into zarr.json
    try:
        existing = outputs.check_replaceable(path, OUTPUT_KIND, overwrite=overwrite, what="output folder")
    except outputs.OutputOwnershipError as exc:
        raise OutputError(str(exc)) from exc
    _probe_writable(path)
    return existing


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
    if overwrite and Path(path).exists():  # only protoseg's own entries (check_output_dir): no stale chunks left
        shutil.rmtree(path)
    names = [*classes.names, classes.background_name]
    palette = classes.palette()
    probs_ome = {
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
    mask_ome = {
        "version": NGFF_VERSION,
        "multiscales": _multiscales("mask", len(levels), mpp, False),
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [{"label-value": i, "rgba": [*c, 255]} for i, c in enumerate(palette)],
            "properties": [{"label-value": i, "name": n} for i, n in enumerate(names)],
        },
    }
    info = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "classes": classes.to_dict(),
        "mpp": mpp,
        "slide": slide,
        "layout": layout,
        "complete": False,
        "pyramid_complete": False,
        "all_chunks_stored": True,
    }
    # every group's attributes go into its zarr.json as it is created (one write each); the marker lives in the
    # root zarr.json (a file beside it is "not a zarr component" to zarr), so later attribute updates keep it
    marker = outputs.marker_record(OUTPUT_KIND, _ZARR_ENTRIES)
    root = zarr.open_group(
        str(path), mode="w-", zarr_format=3, attributes={outputs.ZARR_MARKER_ATTR: marker, "protoseg": info}
    )
    probs = root.create_group("probs", attributes={"ome": probs_ome})
    mask = root.create_group("mask", attributes={"ome": mask_ome})
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
            config={"write_empty_chunks": True},  # every chunk is stored, so a missing file means damage
        )
    rows, cols = -(-levels[0][1] // chunk), -(-levels[0][0] // chunk)
    root.create_array(
        "done", shape=(rows, cols), chunks=(min(rows, 1024), min(cols, 1024)), dtype="uint8", fill_value=0
    )
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


#: How to repair an unfinished or damaged prediction (said by every error about one).
REPAIR = (
    "re-run `protoseg predict` on the same slide and checkpoint into the same folder: "
    "it resumes and computes only the missing chunks"
)


def _chunk_file(arr: Any, root: Path, name: str, coords: tuple[int, ...]) -> Path:
    return root / name / arr.metadata.encode_chunk_key(coords)


def missing_chunks(pred: PredictionZarr, level: int = 0) -> list[tuple[str, int, int, Path]]:
    """Chunks of ``level`` whose files are absent: ``(array, row, col, file)``. Score chunks are always
    stored (scores are never all zero); mask chunks only in folders that store every chunk."""
    strict_mask = bool(pred.attrs.get("all_chunks_stored"))
    probs, mask = pred.probs(level), pred.mask(level)
    c = int(pred.attrs["layout"]["chunk"])
    h, w = mask.shape
    out = []
    for cy in range(-(-h // c)):
        for cx in range(-(-w // c)):
            f = _chunk_file(probs, pred.path, f"probs/{level}", (0, cy, cx))
            if not f.is_file():
                out.append(("probs", cy, cx, f))
            if strict_mask:
                f = _chunk_file(mask, pred.path, f"mask/{level}", (cy, cx))
                if not f.is_file():
                    out.append(("mask", cy, cx, f))
    return out


def unfinished_chunks(pred: PredictionZarr) -> tuple[int, int]:
    """(level-0 chunks not marked done, all level-0 chunks) from the ``done`` record."""
    import numpy as np

    done = np.asarray(pred.group["done"][...])
    return int(done.size - np.count_nonzero(done)), int(done.size)


def check_arrays(pred: PredictionZarr) -> None:
    """Raise ``OutputError`` naming the first array whose metadata is missing or unreadable (not repairable
    by resuming: the run has to be redone with ``--overwrite``)."""
    names = ["done", *(f"{a}/{k}" for a in ("probs", "mask") for k in range(pred.num_levels))]
    for name in names:
        try:
            node = pred.group
            for part in name.split("/"):
                node = node[part]
        except Exception as exc:  # KeyError / JSON / codec errors of damaged metadata
            raise OutputError(
                f"{pred.path} is damaged: the array {name} is missing or unreadable ({type(exc).__name__}); "
                "re-run `protoseg predict` with --overwrite to predict the slide again."
            ) from exc


def check_finished(pred: PredictionZarr) -> None:
    """Raise ``OutputError`` unless the prediction is complete: completion flags, every chunk marked done in
    the ``done`` record, and every chunk file of every level present. The message names the first bad chunk
    and how to repair it."""
    import numpy as np

    check_arrays(pred)
    done = np.asarray(pred.group["done"][...])
    todo = np.argwhere(done == 0)
    if len(todo):
        r, c = (int(v) for v in todo[0])
        raise OutputError(
            f"{pred.path} is an unfinished prediction: {len(todo)} of {done.size} chunks were never written "
            f"(first: row {r}, col {c}); {REPAIR}."
        )
    if not pred.complete:
        raise OutputError(f"{pred.path} is an unfinished prediction (its pyramid was not built); {REPAIR}.")
    for level in range(pred.num_levels):
        bad = missing_chunks(pred, level)
        if bad:
            name, r, c, f = bad[0]
            raise OutputError(
                f"{pred.path} is damaged: {len(bad)} chunk file(s) missing at level {level}, first the {name} "
                f"chunk at row {r}, col {c} ({f}); {REPAIR}."
            )


class CheckedArray:
    """A zarr array whose reads name the damaged chunk (and the repair) instead of a raw codec error."""

    def __init__(self, arr: Any, pred: PredictionZarr, name: str) -> None:
        self._arr, self._pred, self._name = arr, pred, name

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._arr, attr)

    def __len__(self) -> int:
        return len(self._arr)

    def __getitem__(self, sel: Any) -> Any:
        try:
            return self._arr[sel]
        except Exception as exc:  # codec/store errors of a damaged chunk, re-raised with its name
            raise OutputError(self._describe(exc)) from exc

    def _describe(self, exc: BaseException) -> str:
        arr, c = self._arr, int(self._pred.attrs["layout"]["chunk"])
        lead = (0,) if arr.ndim == 3 else ()
        h, w = arr.shape[-2:]
        for cy in range(-(-h // c)):
            for cx in range(-(-w // c)):
                try:
                    arr[(*(slice(None),) * len(lead), slice(cy * c, (cy + 1) * c), slice(cx * c, (cx + 1) * c))]
                except Exception as inner:  # noqa: BLE001 - the damaged chunk
                    f = _chunk_file(arr, self._pred.path, self._name, (*lead, cy, cx))
                    return (
                        f"{self._pred.path}: the {self._name} chunk at row {cy}, col {cx} ({f}) cannot be read "
                        f"({type(inner).__name__}: {inner}); delete that file and {REPAIR}."
                    )
        return f"{self._pred.path}: {self._name} cannot be read ({type(exc).__name__}: {exc}); {REPAIR}."
