"""What a batch prediction was made from: slide identity (path, size, content fingerprint) and model
weights hash, recorded in the output so a resume continues only the same slide with the same model."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: Bytes of the slide file hashed as its header fingerprint.
HEADER_BYTES = 1 << 16
#: Side (prediction-grid px) of the tiles hashed as the content fingerprint.
PROBE = 64

#: Readable names of the recorded settings, for "what differs" messages.
_NAMES = {
    "slide_identity.path": "slide path",
    "slide_identity.file_size": "slide file size",
    "slide_identity.header_sha256": "slide file header",
    "slide_identity.tiles_sha256": "slide content (fingerprint of a few tiles)",
    "predictor.model_sha256": "model weights (checkpoint content)",
    "predictor.classes": "classes",
    "predictor.mpp": "model mpp",
    "predictor.tile_size": "tile size",
    "predictor.overlap": "tile overlap",
    "predictor.tta": "TTA",
    "predictor.window": "blend window",
    "predictor.pad": "padding",
    "slide_dimensions": "slide dimensions",
    "slide_mpp": "slide mpp",
    "tissue_only": "tissue-only",
}


def model_sha256(model: torch.nn.Module) -> str:
    """SHA-256 over the model's state dict (names, dtypes, shapes, bytes): the same weights give the same hash."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().to("cpu").contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _file_facts(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path).resolve()
    if not p.is_file():  # e.g. a slide that is a folder: its name is the identity
        return {"path": str(p), "file_size": None, "header_sha256": None}
    with p.open("rb") as fh:
        head = fh.read(HEADER_BYTES)
    return {"path": str(p), "file_size": p.stat().st_size, "header_sha256": hashlib.sha256(head).hexdigest()}


def slide_identity(path: str | os.PathLike[str] | None, read: Any, width: int, height: int) -> dict[str, Any]:
    """Path + size + header hash of the file (when there is one) and a hash of five ``PROBE``-px tiles
    (centre and quarter points) read with ``read((x, y, w, h))`` on the prediction grid."""
    facts = _file_facts(path) if path is not None else {"path": None, "file_size": None, "header_sha256": None}
    h = hashlib.sha256()
    s = PROBE
    for fx, fy in ((0.5, 0.5), (0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)):
        x, y = max(0, int(fx * width) - s // 2), max(0, int(fy * height) - s // 2)
        h.update(np.ascontiguousarray(read((x, y, s, s)), dtype=np.uint8).tobytes())
    return {**facts, "tiles_sha256": h.hexdigest()}


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def differences(recorded: dict[str, Any], wanted: dict[str, Any], ignore: tuple[str, ...] = ()) -> list[str]:
    """Readable names of what differs between two recorded layouts (``ignore``: dotted keys skipped)."""
    a, b = _flatten(json.loads(json.dumps(recorded))), _flatten(json.loads(json.dumps(wanted)))  # as stored
    names: list[str] = []
    for key in sorted(set(a) | set(b)):
        if key in ignore or a.get(key) == b.get(key):
            continue
        top = next((n for k, n in _NAMES.items() if key == k or key.startswith(k + ".")), key)
        if key not in a:
            top = f"{top} (not recorded: written by an older protoseg)"
        if top not in names:
            names.append(top)
    return names


def default_prediction_name(slide: str | os.PathLike[str], checkpoint: str | os.PathLike[str]) -> str:
    """``<slide stem>-<8 hex>.zarr``, the hash over the resolved slide path and the checkpoint's resolved path,
    size and modification time: one folder per slide and checkpoint (a retrained checkpoint gets a new one)."""
    from protoseg.slide.formats import slide_stem

    s, c = Path(slide).resolve(), Path(checkpoint).resolve()
    try:
        st = c.stat()
        facts = f"{st.st_size}|{st.st_mtime_ns}"
    except OSError:
        facts = ""
    digest = hashlib.sha256(f"{s}|{c}|{facts}".encode()).hexdigest()[:8]
    return f"{slide_stem(s.name)}-{digest}.zarr"
