"""Device choice (shared with training, see ``protoseg.runtime``) and an autocast context active only on CUDA."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from protoseg.runtime import select_device

__all__ = ["autocast_for", "select_device"]

logger = logging.getLogger(__name__)


@contextlib.contextmanager
def autocast_for(device: torch.device, amp: bool) -> Iterator[None]:
    """Mixed precision (float16 autocast) only on CUDA when ``amp``; a no-op elsewhere."""
    if amp and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            yield
    else:
        yield
