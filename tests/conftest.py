"""Test-wide settings: no test downloads weights (``model.weights: auto`` falls back to random init offline)."""

from __future__ import annotations

import os

# protoseg.models.backbone.OFFLINE_ENV: with this set, "auto" weights never try the network.
os.environ.setdefault("PROTOSEG_OFFLINE", "1")
