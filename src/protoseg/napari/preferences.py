"""Make protoseg napari's reader for whole-slide files, when the user asks (a button in the Region tagging dock).

napari picks among several compatible readers through its ``plugins.extension2reader`` setting (pattern ->
plugin); without an entry, File > Open asks which reader to use. :func:`prefer_protoseg_reader` fills in the
whole-slide patterns the user has not assigned yet and never overrides a choice they made (Preferences >
Plugins keeps the last word). Plain image patterns (``*.tif``, ``*.png``, ...), ``*.dcm`` (radiology DICOM)
and ``*.zarr`` (OME-Zarr of other plugins) are never touched: those files belong to napari's own readers
unless the user decides otherwise; protoseg's reader still opens RGB slides of those types when chosen.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from protoseg.slide import PLAIN_IMAGE_EXTENSIONS, WHOLE_SLIDE_EXTENSIONS

logger = logging.getLogger(__name__)

PLUGIN = "protoseg"
#: Patterns assigned to protoseg on request: whole-slide formats, less DICOM (mostly radiology images).
PATTERNS: tuple[str, ...] = tuple(f"*{ext}" for ext in WHOLE_SLIDE_EXTENSIONS if ext != ".dcm")
#: Plain image patterns an earlier protoseg assigned by itself; reported, never changed.
PLAIN_PATTERNS: tuple[str, ...] = (*(f"*{ext}" for ext in PLAIN_IMAGE_EXTENSIONS), "*.zarr")


@dataclass
class ReaderPreference:
    """What :func:`prefer_protoseg_reader` did: patterns it assigned, those left to the user's choice."""

    assigned: list[str] = field(default_factory=list)
    already: list[str] = field(default_factory=list)  # already protoseg
    kept: dict[str, str] = field(default_factory=dict)  # pattern -> the reader the user chose
    plain: list[str] = field(default_factory=list)  # plain image patterns that point to protoseg

    def summary(self) -> str:
        """One status line for the dock."""
        parts = []
        if self.assigned:
            parts.append(f"napari now opens {' '.join(self.assigned)} with protoseg")
        if self.already:
            parts.append(f"{' '.join(self.already)} already open with protoseg")
        if self.kept:
            kept = ", ".join(f"{p} → {reader}" for p, reader in self.kept.items())
            parts.append(f"left to your existing choice: {kept}")
        if self.plain:
            parts.append(
                f"your preferences also open {' '.join(self.plain)} with protoseg, which declines non-slide "
                "images: change it in File > Preferences > Plugins if ordinary images should open with napari"
            )
        return "; ".join(parts) + " (File > Preferences > Plugins)" if parts else "napari settings unavailable"


def prefer_protoseg_reader() -> ReaderPreference:
    """Assign every unassigned whole-slide pattern to protoseg in napari's reader preferences; patterns the
    user already assigned (to any reader) are kept as they are."""
    result = ReaderPreference()
    try:
        from napari.settings import get_settings
    except ImportError:  # pragma: no cover - napari is a dependency of the viewer only
        return result
    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    for pattern in PATTERNS:
        chosen = current.get(pattern)
        if chosen is None:
            result.assigned.append(pattern)
        elif chosen == PLUGIN:
            result.already.append(pattern)
        else:
            result.kept[pattern] = chosen
    result.plain = [p for p in PLAIN_PATTERNS if current.get(p) == PLUGIN]
    if result.assigned:
        plugins.extension2reader = {**current, **dict.fromkeys(result.assigned, PLUGIN)}
    logger.info("reader preferences: %s", result.summary())
    return result
