"""Value types shared by the dataset layouts: layout and split enums, one record per patch."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class Layout(str, enum.Enum):
    """Known patch-dataset folder layouts."""

    BCSS_WSSS = "bcss_wsss"
    LUAD_HISTOSEG = "luad_histoseg"
    GENERIC = "generic"


class Split(str, enum.Enum):
    """Dataset split; ``val`` also matches a folder called ``valid``."""

    TRAIN = "train"
    VAL = "val"
    TEST = "test"


@dataclass(frozen=True)
class PatchRecord:
    """One patch on disk: image path, image-level label (None = derive from mask), optional mask."""

    image: Path
    name: str
    label: tuple[int, ...] | None = None
    mask: Path | None = None
    mpp: float | None = None


def list_images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name (hidden files skipped)."""
    if not folder.is_dir():
        return []
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def describe_folder(folder: Path, limit: int = 6) -> str:
    """Short listing of a folder's entries for error messages."""
    if not folder.exists():
        return f"{folder} does not exist"
    if not folder.is_dir():
        return f"{folder} is a file, not a folder"
    entries = sorted(folder.iterdir())
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" (+{len(entries) - limit} more)" if len(entries) > limit else ""
    return f"{folder} contains {shown or 'nothing'}{more}"
