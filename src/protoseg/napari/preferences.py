"""Make protoseg napari's reader for slide files (no "choose a reader" dialog, no silent built-in reader).

napari picks among several compatible readers through its ``plugins.extension2reader`` setting (pattern ->
plugin). protoseg fills in the slide patterns the user has not assigned yet, never overriding a choice the
user made (Preferences > Plugins keeps the last word). npe2 runs no plugin code at napari start-up, so this
happens the first time protoseg runs in a session: a dock widget, the sample data or the reader itself.
"""

from __future__ import annotations

import logging

from protoseg.slide import SUPPORTED_EXTENSIONS

logger = logging.getLogger(__name__)

PLUGIN = "protoseg"
#: The patterns of napari.yaml's reader contribution (slides + prediction folders).
PATTERNS = (*(f"*{ext}" for ext in SUPPORTED_EXTENSIONS), "*.zarr")


def prefer_protoseg_reader() -> list[str]:
    """Assign every unassigned slide pattern to protoseg in napari's reader preferences; returns the patterns
    assigned now (empty when napari is absent or all were already set)."""
    try:
        from napari.settings import get_settings
    except ImportError:  # pragma: no cover - napari is a dependency of the viewer only
        return []
    plugins = get_settings().plugins
    current = dict(plugins.extension2reader)
    added = [p for p in PATTERNS if p not in current]
    if added:
        current.update(dict.fromkeys(added, PLUGIN))
        plugins.extension2reader = current
        logger.info("napari now opens %s with protoseg (change it in Preferences > Plugins)", ", ".join(added))
    others = sorted({v for p, v in current.items() if p in PATTERNS and v != PLUGIN})
    if others:
        logger.info("your napari preferences open some slide files with %s, not protoseg", ", ".join(others))
    return added
