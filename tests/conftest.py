"""Test-wide settings: no test downloads weights (``model.weights: auto`` falls back to random init offline),
no test reads or writes the user's napari settings (reader preferences are saved on every change), and no test
runs the default-length self-supervised warm start."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

# protoseg.models.backbone.OFFLINE_ENV: with this set, "auto" weights never try the network.
os.environ.setdefault("PROTOSEG_OFFLINE", "1")

# napari reads NAPARI_CONFIG when napari.settings is first imported, i.e. after this file: every viewer,
# dock and child process of the test session saves its settings here, never in ~/.config/napari.
#: The longest warm start a test may run in the test process (``_no_full_warm_start``).
MAX_TEST_WARM_START_STEPS = 50

NAPARI_CONFIG_DIR = Path(tempfile.mkdtemp(prefix="protoseg-tests-napari-"))
os.environ["NAPARI_CONFIG"] = str(NAPARI_CONFIG_DIR / "settings.yaml")


def pytest_unconfigure(config: object) -> None:
    """Remove the session's napari settings folder."""
    shutil.rmtree(NAPARI_CONFIG_DIR, ignore_errors=True)


@pytest.fixture(autouse=True)
def _no_full_warm_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Suite speed: a test that trains stage 1 from random init must set ``stage1.warm_start=none`` (or a few
    ``warm_start_steps``); the default 400 self-supervised steps take minutes. Fails such a test, naming why."""
    from protoseg.train import warm_start

    real = warm_start.train_warm_start

    def guarded(plan, *args, **kwargs):
        if plan.steps > MAX_TEST_WARM_START_STEPS:
            raise AssertionError(
                f"a test ran a {plan.steps}-step warm start: set stage1.warm_start=none (or few warm_start_steps)"
            )
        return real(plan, *args, **kwargs)

    monkeypatch.setattr(warm_start, "train_warm_start", guarded)
