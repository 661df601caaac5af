"""protoseg: weakly supervised tissue segmentation of whole-slide images (napari plugin + library)."""

from __future__ import annotations

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
