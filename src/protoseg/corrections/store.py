"""The corrections store: one chunked zarr v3 folder per slide (and model grid) that protoseg owns.

```
<slide>-<hash>.corrections.zarr/   root group; attrs["protoseg"] = format, slide, shape, mpp, scale, classes, chunk;
                                   attrs["protoseg_output"] = the protoseg.outputs marker (kind "corrections")
  labels     uint8 (H, W), chunks (512, 512), blosc/zstd: 0 = no correction, c + 1 = tissue class c,
             C + 1 = background; empty chunks are not stored
  reviewed   uint8 (rows, cols): one cell per labels chunk, 1 = reviewed
  accepted   uint8 (H, W), like labels: the prediction shown when a block was marked reviewed (c + 1 = class c,
             0 = not shown); a retrain takes a reviewed block's unpainted pixels as these (stores written
             before it have none: the retrain falls back to its parent's prediction)
```
The grid is level 0 of a protoseg prediction of that slide with that checkpoint (``mpp`` µm per pixel,
``scale`` level-0 slide pixels per grid pixel). Writes go to disk at once (no save step).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from protoseg import outputs
from protoseg.classes import ClassSpec
from protoseg.corrections.errors import CorrectionsError

logger = logging.getLogger(__name__)

CORRECTIONS_SUFFIX = ".corrections.zarr"
FORMAT = "protoseg-corrections"
FORMAT_VERSION = 1
#: The ``protoseg.outputs`` marker kind of a corrections store.
OUTPUT_KIND = "corrections"
LABELS, REVIEWED, ACCEPTED = "labels", "reviewed", "accepted"
_ENTRIES = frozenset({"zarr.json", LABELS, REVIEWED, ACCEPTED})
#: Store value meaning "no correction here" (class c is stored as c + 1).
NO_CORRECTION = 0


def default_corrections_path(
    prediction_or_checkpoint_dir: str | os.PathLike[str], slide: str | os.PathLike[str]
) -> Path:
    """``<folder>/<slide file name>-<8 hex of its resolved path>.corrections.zarr``: stable per slide file."""
    p = Path(slide).expanduser()
    digest = hashlib.sha256(str(p.resolve()).encode("utf-8")).hexdigest()[:8]
    return Path(prediction_or_checkpoint_dir) / f"{p.name}-{digest}{CORRECTIONS_SUFFIX}"


def _slide_id(slide: str | os.PathLike[str]) -> str:
    return str(Path(slide).expanduser().resolve())


def read_attrs(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The ``protoseg`` attributes of a corrections store, or None when ``path`` is not one."""
    try:
        doc = json.loads((Path(path) / "zarr.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    attrs = doc.get("attributes", {}).get("protoseg") if isinstance(doc, dict) else None
    return attrs if isinstance(attrs, dict) and attrs.get("format") == FORMAT else None


def is_corrections_store(path: str | os.PathLike[str]) -> bool:
    """True when ``path`` is a corrections store protoseg wrote (format attributes and ownership marker)."""
    return read_attrs(path) is not None and outputs.owned_by(path, OUTPUT_KIND)


@dataclass(frozen=True)
class CorrectionStore:
    """An opened corrections store: metadata plus the writable ``array`` (labels) and ``reviewed`` grid."""

    path: Path
    slide: str
    shape: tuple[int, int]
    mpp: float | None  # None: the slide and the model have no resolution (predicted at native pixels)
    scale: float
    classes: ClassSpec
    chunk: int
    array: Any
    reviewed: Any
    accepted: Any = None  # None: a store written before the accepted array existed

    @property
    def grid_shape(self) -> tuple[int, int]:
        """(rows, cols) of 512x512 (``chunk``) blocks: the shape of ``reviewed``."""
        return -(-self.shape[0] // self.chunk), -(-self.shape[1] // self.chunk)

    def read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """uint8 labels of rows y0:y1, columns x0:x1 (0 = none, c + 1 = class c)."""
        return np.asarray(self.array[y0:y1, x0:x1])

    def write(self, y0: int, x0: int, block: np.ndarray) -> None:
        """Write a uint8 block of labels at (y0, x0), to disk at once; values above C + 1 raise."""
        block = np.asarray(block)
        top = self.classes.num_classes + 1
        if block.ndim != 2 or (block.size and (int(block.min()) < 0 or int(block.max()) > top)):
            raise CorrectionsError(
                f"corrections written to {self.path} must be a 2-D block of values 0..{top} (0 = none, c + 1 = class c)"
            )
        h, w = block.shape
        if y0 < 0 or x0 < 0 or y0 + h > self.shape[0] or x0 + w > self.shape[1]:
            raise CorrectionsError(
                f"block {h}x{w} at (y={y0}, x={x0}) lies outside the {self.shape} grid of {self.path}"
            )
        self.array[y0 : y0 + h, x0 : x0 + w] = block.astype(np.uint8, copy=False)

    def stored_chunks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        """(row, col, block) of every stored labels chunk holding a correction, row-major; empty chunks are
        never read (they have no file)."""
        rows, cols = self.grid_shape
        c = self.chunk
        for cy in range(rows):
            for cx in range(cols):
                key = self.array.metadata.encode_chunk_key((cy, cx))
                if not (self.path / LABELS / key).is_file():
                    continue
                block = self.read(cy * c, min((cy + 1) * c, self.shape[0]), cx * c, min((cx + 1) * c, self.shape[1]))
                if block.any():
                    yield cy, cx, block

    def digest(self) -> str:
        """sha256 of the classes, grid shape and every corrected pixel (stable across reopenings and codecs)."""
        h = hashlib.sha256()
        header = {"classes": self.classes.to_dict(), "shape": list(self.shape), "chunk": self.chunk}
        h.update(json.dumps(header, sort_keys=True).encode("utf-8"))
        for cy, cx, block in self.stored_chunks():
            h.update(f"|{cy},{cx},{block.shape[0]},{block.shape[1]}|".encode())
            h.update(np.ascontiguousarray(block, np.uint8).tobytes())
        return h.hexdigest()

    def review_digest(self) -> str:
        """sha256 of the ``reviewed`` grid (which blocks were looked at: a retrain may take them as confirmed)."""
        grid = np.ascontiguousarray(np.asarray(self.reviewed[...]) != 0, np.uint8)
        h = hashlib.sha256(f"{grid.shape}".encode() + grid.tobytes())
        for row, col in zip(*np.nonzero(grid), strict=True):
            y0, y1, x0, x1 = self.block_box(int(row), int(col))
            h.update(np.ascontiguousarray(self.read_accepted(y0, y1, x0, x1)).tobytes())
        return h.hexdigest()

    def counts(self) -> dict[str, int]:
        """Corrected pixels per class name (tissue classes, then background), zeros included."""
        names = [*self.classes.names, self.classes.background_name]
        total = np.zeros(len(names) + 1, np.int64)
        for _, _, block in self.stored_chunks():
            total += np.bincount(block.ravel(), minlength=len(total))[: len(total)]
        return {name: int(total[i + 1]) for i, name in enumerate(names)}

    def is_empty(self) -> bool:
        """True when no pixel is corrected."""
        return next(self.stored_chunks(), None) is None

    def block_box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """(y0, y1, x0, x1) of review block (row, col) on the grid (edge blocks are clipped)."""
        c = self.chunk
        return row * c, min((row + 1) * c, self.shape[0]), col * c, min((col + 1) * c, self.shape[1])

    def mark_reviewed(self, row: int, col: int, value: bool = True, shown: np.ndarray | None = None) -> None:
        """Mark the block (row, col) reviewed (or not). ``shown``: the class map (block-sized, class indices,
        255 = not shown) the user was shown there, kept in ``accepted``; unmarking clears it."""
        y0, y1, x0, x1 = self.block_box(row, col)
        if self.accepted is not None and (shown is not None or not value):
            block = np.zeros((y1 - y0, x1 - x0), np.uint8)
            if value and shown is not None:
                shown = np.asarray(shown)
                top = self.classes.num_classes
                if shown.shape != block.shape:
                    raise CorrectionsError(
                        f"the class map shown for block ({row}, {col}) of {self.path} must be {block.shape}, got "
                        f"{shown.shape}"
                    )
                ok = shown <= top
                block[ok] = shown[ok].astype(np.uint8) + 1
            self.accepted[y0:y1, x0:x1] = block
        self.reviewed[row, col] = np.uint8(bool(value))

    def read_accepted(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """int16 classes shown when rows y0:y1, columns x0:x1 were reviewed (-1 = none, or no accepted array)."""
        if self.accepted is None:
            return np.full((y1 - y0, x1 - x0), -1, np.int16)
        return np.asarray(self.accepted[y0:y1, x0:x1]).astype(np.int16) - 1

    def reviewed_count(self) -> int:
        """How many blocks are marked reviewed."""
        return int(np.count_nonzero(np.asarray(self.reviewed[...])))


def same_mpp(a: float | None, b: float | None) -> bool:
    """True when two grid resolutions agree: both unknown (None), or both numbers within 1e-6."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-6)


def _check_geometry(path: Path, shape: tuple[int, int], mpp: float | None, scale: float, chunk: int) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise CorrectionsError(f"corrections {path}: shape must be (height, width), got {shape!r}") from None
    if h < 1 or w < 1 or chunk < 16:
        raise CorrectionsError(f"corrections {path}: need a positive grid and chunk >= 16, got {shape}, chunk {chunk}")
    for name, value in (("mpp", mpp), ("scale", scale)):
        if name == "mpp" and value is None:
            continue  # unknown resolution: a slide without metadata predicted at its native pixels
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise CorrectionsError(f"corrections {path}: {name} must be a positive number, got {value!r}")
    return h, w


def create_corrections(
    path: str | os.PathLike[str],
    *,
    slide: str | os.PathLike[str],
    shape: tuple[int, int],
    mpp: float | None,
    scale: float,
    classes: ClassSpec,
    chunk: int = 512,
    source: str | None = None,
) -> CorrectionStore:
    """Create an empty corrections store at ``path`` (missing or an empty folder); an existing store or
    anything protoseg did not write there is refused (nothing painted is ever replaced). ``source`` records
    the file the corrections were imported from (a GeoJSON), if any."""
    import zarr
    from zarr.codecs import BloscCodec

    path = Path(path)
    h, w = _check_geometry(path, shape, mpp, scale, int(chunk))
    if read_attrs(path) is not None:
        raise CorrectionsError(
            f"{path} already holds corrections; open it (open_corrections) or choose another path "
            "(nothing was changed)."
        )
    try:
        outputs.check_replaceable(path, OUTPUT_KIND, what="corrections folder")
    except outputs.OutputOwnershipError as exc:
        raise CorrectionsError(str(exc)) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        root = zarr.open_group(str(path), mode="w-", zarr_format=3)
    except (OSError, FileExistsError, zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError) as exc:
        raise CorrectionsError(f"cannot create corrections {path} ({exc}); choose a writable, new folder.") from None
    root.attrs[outputs.ZARR_MARKER_ATTR] = outputs.marker_record(OUTPUT_KIND, _ENTRIES)
    root.attrs["protoseg"] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "slide": _slide_id(slide),
        "shape": [h, w],
        "mpp": None if mpp is None else float(mpp),
        "scale": float(scale),
        "classes": classes.to_dict(),
        "chunk": int(chunk),
        "source": source,
    }
    codec = BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle")
    root.create_array(
        LABELS,
        shape=(h, w),
        chunks=(chunk, chunk),
        dtype="uint8",
        fill_value=NO_CORRECTION,
        compressors=codec,
        dimension_names=("y", "x"),
        config={"write_empty_chunks": False},
    )
    root.create_array(
        ACCEPTED,
        shape=(h, w),
        chunks=(chunk, chunk),
        dtype="uint8",
        fill_value=0,
        compressors=codec,
        dimension_names=("y", "x"),
        config={"write_empty_chunks": False},
    )
    rows, cols = -(-h // chunk), -(-w // chunk)
    root.create_array(
        REVIEWED, shape=(rows, cols), chunks=(min(rows, 1024), min(cols, 1024)), dtype="uint8", fill_value=0
    )
    logger.info("created corrections %s (%dx%d px at %s µm/px)", path, h, w, "unknown" if mpp is None else f"{mpp:.4g}")
    return open_corrections(path)


def open_corrections(path: str | os.PathLike[str], mode: str = "r+") -> CorrectionStore:
    """Open a corrections store (``mode`` "r" read-only, "r+" writable); anything else raises one line."""
    import zarr

    path = Path(path)
    attrs = read_attrs(path)
    if attrs is None or not outputs.owned_by(path, OUTPUT_KIND):
        raise CorrectionsError(
            f"{path} is not a protoseg corrections store (a <slide>{CORRECTIONS_SUFFIX} folder protoseg wrote); "
            "pass such a folder, or create one by painting corrections in the Predict dock."
        )
    try:
        group = zarr.open_group(str(path), mode=mode, zarr_format=3)
        labels, reviewed = group[LABELS], group[REVIEWED]
        classes = ClassSpec.from_dict(attrs["classes"])
        h, w = (int(v) for v in attrs["shape"])
        store = CorrectionStore(
            path=path,
            slide=str(attrs["slide"]),
            shape=(h, w),
            mpp=None if attrs["mpp"] is None else float(attrs["mpp"]),
            scale=float(attrs["scale"]),
            classes=classes,
            chunk=int(attrs["chunk"]),
            array=labels,
            reviewed=reviewed,
            accepted=group[ACCEPTED] if ACCEPTED in group else None,
        )
    except Exception as exc:  # noqa: BLE001 - KeyError, JSON and codec errors of a damaged store
        raise CorrectionsError(
            f"corrections {path} are damaged ({type(exc).__name__}: {str(exc)[:120]}); restore a copy of the folder."
        ) from None
    if tuple(labels.shape) != store.shape:
        raise CorrectionsError(f"corrections {path} are damaged (labels {labels.shape} vs shape {store.shape}).")
    return store


def mismatches(
    store: CorrectionStore,
    slide: str | os.PathLike[str],
    shape: tuple[int, int],
    mpp: float | None,
    classes: ClassSpec,
) -> list[str]:
    """What differs between ``store`` and the slide / grid / classes it is about to be used with."""
    out = []
    if store.slide != _slide_id(slide):
        out.append(f"slide {store.slide} vs {_slide_id(slide)}")
    if tuple(store.shape) != tuple(int(v) for v in shape):
        out.append(f"grid {store.shape[0]}x{store.shape[1]} vs {int(shape[0])}x{int(shape[1])} px")
    if not same_mpp(store.mpp, mpp):
        out.append(f"mpp {_mpp_text(store.mpp)} vs {_mpp_text(mpp)}")
    if tuple(store.classes.names) != tuple(classes.names):
        out.append(f"classes {list(store.classes.names)} vs {list(classes.names)}")
    return out


def _mpp_text(mpp: float | None) -> str:
    return "unknown" if mpp is None else f"{float(mpp):g}"


def open_or_create_corrections(
    path: str | os.PathLike[str],
    *,
    slide: str | os.PathLike[str],
    shape: tuple[int, int],
    mpp: float | None,
    scale: float,
    classes: ClassSpec,
    chunk: int = 512,
) -> CorrectionStore:
    """Reopen the store at ``path`` when it matches slide, grid, mpp and classes (else one line saying what
    differs), or create it when there is none."""
    path = Path(path)
    if read_attrs(path) is None:
        return create_corrections(path, slide=slide, shape=shape, mpp=mpp, scale=scale, classes=classes, chunk=chunk)
    store = open_corrections(path)
    diffs = mismatches(store, slide, shape, mpp, classes)
    if diffs:
        raise CorrectionsError(
            f"corrections {path} were painted for another slide or model ({'; '.join(diffs)}); "
            "choose another corrections path (the existing one is kept)."
        )
    return store
