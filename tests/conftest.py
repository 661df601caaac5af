"""Test-wide settings: no test downloads weights (``model.weights: auto`` falls back to random init offline),
and no test reads or writes the user's napari settings (reader preferences are saved on every change)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# protoseg.models.backbone.OFFLINE_ENV: with this set, "auto" weights never try the network.
os.environ.setdefault("PROTOSEG_OFFLINE", "1")

# napari reads NAPARI_CONFIG when napari.settings is first imported, i.e. after this file: every viewer,
# dock and child process of the test session saves its settings here, never in ~/.config/napari.
NAPARI_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="protoseg-tests-napari-"))
os.environ["NAPARI_CONFIG"] = str(NAPARI_CONFIG_DIR / "settings.yaml")


def pytest_unconfigure(config: object) -> None:
    """Remove the session's napari settings folder."""
    shutil.rmtree(NAPARI_CONFIG_DIR, ignore_errors=True)
