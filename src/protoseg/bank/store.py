"""On-disk image bank folder: human-readable ``manifest.json`` + ``features.npy`` + ``thumbnails.npy``."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from protoseg import outputs
from protoseg.bank.core import BankMember, ImageBank
from protoseg.bank.errors import BankError, BankFormatError
from protoseg.classes import ClassSpec

logger = logging.getLogger(__name__)

FORMAT_NAME = "protoseg-image-bank"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURES = "features.npy"
THUMBNAILS = "thumbnails.npy"


def _member_record(bank: ImageBank, m: BankMember) -> dict[str, Any]:
    return {
        "id": m.member_id,
        "class": m.class_index,
        "class_name": bank.class_spec.names[m.class_index],
        "cluster": m.cluster,
        "source": m.source,
        "box": None if m.box is None else list(m.box),
        "mpp": m.mpp,
        "excluded": m.excluded,
        "pinned": m.pinned,
        "added_by_user": m.added_by_user,
        "distance": m.distance,
    }


def bank_manifest(bank: ImageBank) -> dict[str, Any]:
    """The JSON-serialisable manifest of a bank (what ``manifest.json`` holds)."""
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "classes": bank.class_spec.to_dict(),
        "encoder_id": bank.encoder_id,
        "encoder_input_size": bank.encoder_input_size,
        "data_scale": bank.data_scale,
        "k": bank.k,
        "n_per_cluster": bank.n_per_cluster,
        "feature_dim": bank.dim,
        "thumbnail_size": int(bank.thumbnails.shape[1]),
        "files": {"features": FEATURES, "thumbnails": THUMBNAILS},
        "members": [_member_record(bank, m) for m in bank.members],
    }


#: The ``protoseg.outputs`` marker kind of an image bank folder.
OUTPUT_KIND = "image-bank"
_BANK_FILES = frozenset({MANIFEST, FEATURES, THUMBNAILS, outputs.MARKER})


def _is_bank_manifest(folder: Path) -> bool:
    """True when ``folder`` holds a ``manifest.json`` of this bank format."""
    try:
        data = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def _adopt_legacy_bank(folder: Path) -> None:
    """Mark a bank folder written before output markers listed their entries, so it may be replaced like
    a marked one: only the bank's own files, with a manifest of this format (a lone ``manifest.json``
    among other files proves nothing)."""
    outputs.adopt_legacy(folder, OUTPUT_KIND, _BANK_FILES, _is_bank_manifest)


def check_bank_output(folder: str | Path, overwrite: bool = False) -> None:
    """Fail early (before any encoding) unless ``folder`` is free, empty or an image bank protoseg wrote.

    Raises ``protoseg.outputs.OutputOwnershipError`` naming the folder (and a foreign file in it);
    ``overwrite=True`` (``--overwrite``) only lets it replace another kind of protoseg output.
    """
    folder = Path(folder)
    _adopt_legacy_bank(folder)
    outputs.check_replaceable(folder, OUTPUT_KIND, overwrite=overwrite, what="image bank folder")


def save_bank(bank: ImageBank, folder: str | Path, overwrite: bool = False) -> Path:
    """Write the bank folder atomically (temp folder, then rename over a previous bank); returns it.

    Only a bank folder protoseg wrote (or a free/empty one) is replaced, or with ``overwrite`` another
    protoseg output; a folder holding anything else is refused (see ``protoseg.outputs``).
    """
    folder = Path(folder)
    check_bank_output(folder, overwrite)
    with outputs.replace_dir(folder, OUTPUT_KIND, overwrite=overwrite) as tmp:
        np.save(tmp / FEATURES, np.ascontiguousarray(bank.features, dtype=np.float32), allow_pickle=False)
        np.save(tmp / THUMBNAILS, np.ascontiguousarray(bank.thumbnails, dtype=np.uint8), allow_pickle=False)
        (tmp / MANIFEST).write_text(json.dumps(bank_manifest(bank), indent=1) + "\n", encoding="utf-8")
    logger.info("saved image bank (%d members) to %s", len(bank), folder)
    return folder


def _require(cond: bool, folder: Path, what: str) -> None:
    if not cond:
        raise BankFormatError(f"image bank {folder}: {what}")


def _read_manifest(folder: Path) -> dict[str, Any]:
    path = folder / MANIFEST
    _require(folder.is_dir(), folder, "folder does not exist; build a bank first (protoseg bank ...)")
    _require(path.is_file(), folder, f"{MANIFEST} is missing; this is not an image bank folder")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BankFormatError(f"image bank {folder}: {MANIFEST} is not valid JSON ({exc})") from exc
    _require(
        isinstance(data, dict) and data.get("format") == FORMAT_NAME,
        folder,
        f"{MANIFEST} is not a protoseg image bank manifest (format must be {FORMAT_NAME!r})",
    )
    _require(
        data.get("version") == FORMAT_VERSION,
        folder,
        f"manifest version {data.get('version')!r} is not supported (this protoseg reads {FORMAT_VERSION})",
    )
    missing = [key for key in ("classes", "encoder_id", "k", "members") if key not in data]
    _require(not missing, folder, f"manifest lacks the keys {missing}")
    return data


def _load_array(folder: Path, name: str) -> np.ndarray:
    path = folder / name
    _require(path.is_file(), folder, f"{name} is missing; save the bank again")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise BankFormatError(f"image bank {folder}: {name} cannot be read ({exc})") from exc


def _member(rec: dict[str, Any], spec: ClassSpec, folder: Path) -> BankMember:
    try:
        box = rec.get("box")
        member = BankMember(
            member_id=str(rec["id"]),
            class_index=int(rec["class"]),
            cluster=int(rec["cluster"]),
            source=str(rec.get("source", "")),
            box=None if box is None else tuple(int(v) for v in box),  # type: ignore[arg-type]
            mpp=None if rec.get("mpp") is None else float(rec["mpp"]),
            excluded=bool(rec.get("excluded", False)),
            pinned=bool(rec.get("pinned", False)),
            added_by_user=bool(rec.get("added_by_user", False)),
            distance=float(rec.get("distance", 0.0)),
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BankFormatError(f"image bank {folder}: bad member record {rec!r} ({exc})") from exc
    _require(member.box is None or len(member.box) == 4, folder, f"member {member.member_id}: box must be [x, y, w, h]")
    name = rec.get("class_name")
    _require(
        name is None or (0 <= member.class_index < spec.num_classes and spec.names[member.class_index] == name),
        folder,
        f"member {member.member_id}: class index {member.class_index} does not match name {name!r}",
    )
    return member


def _input_size(value: Any, folder: Path) -> int | None:
    """The manifest's ``encoder_input_size`` (absent in banks saved before it was recorded)."""
    if value is None:
        return None
    _require(
        isinstance(value, int) and not isinstance(value, bool) and value > 0,
        folder,
        f"manifest encoder_input_size must be a positive integer, got {value!r}",
    )
    return int(value)


def _data_scale(value: Any, folder: Path) -> float | None:
    """The manifest's ``data_scale`` (absent in banks saved before it was recorded, null for region banks)."""
    if value is None:
        return None
    _require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
        folder,
        f"manifest data_scale must be a positive number, got {value!r}",
    )
    return float(value)


def load_bank(folder: str | Path) -> ImageBank:
    """Read a bank folder written by ``save_bank``; any inconsistency raises ``BankFormatError``."""
    folder = Path(folder)
    data = _read_manifest(folder)
    try:
        spec = ClassSpec.from_dict(data["classes"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BankFormatError(f"image bank {folder}: bad class list in manifest ({exc})") from exc
    _require(isinstance(data["members"], list), folder, "manifest 'members' must be a list")
    members = tuple(_member(rec, spec, folder) for rec in data["members"])
    feats = _load_array(folder, FEATURES)
    thumbs = _load_array(folder, THUMBNAILS)
    n = len(members)
    _require(
        feats.ndim == 2 and feats.shape[0] == n,
        folder,
        f"{FEATURES} has shape {feats.shape}, expected ({n}, d) for {n} members",
    )
    _require(
        thumbs.ndim == 4 and thumbs.shape[0] == n and thumbs.shape[3] == 3 and thumbs.dtype == np.uint8,
        folder,
        f"{THUMBNAILS} has shape {thumbs.shape} {thumbs.dtype}, expected ({n}, t, t, 3) uint8",
    )
    dim = data.get("feature_dim")
    _require(
        dim is None or dim == feats.shape[1],
        folder,
        f"manifest feature_dim {dim} but {FEATURES} has {feats.shape[1]} columns",
    )
    try:
        return ImageBank(
            class_spec=spec,
            encoder_id=str(data["encoder_id"]),
            k=int(data["k"]),
            members=members,
            features=feats,
            thumbnails=thumbs,
            n_per_cluster=int(data.get("n_per_cluster", 100)),
            encoder_input_size=_input_size(data.get("encoder_input_size"), folder),
            data_scale=_data_scale(data.get("data_scale"), folder),
        )
    except BankError as exc:
        raise BankFormatError(f"image bank {folder}: {exc}") from exc
