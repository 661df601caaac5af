"""How CAMs are scaled before classes compete for a pixel (torch-free, so configs can name it)."""

from __future__ import annotations

from enum import Enum


class CamNorm(str, Enum):
    """How CAMs are scaled to [0, 1] before classes compete for a pixel."""

    PER_CLASS = "per_class"  # each class min-max over the image: PBIP's pseudo-mask rule
    JOINT = "joint"  # one scale for all (kept) classes, the image's largest CAM: keeps the classifier's own ranking
