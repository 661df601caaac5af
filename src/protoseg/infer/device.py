"""Device choice (shared with training, see ``protoseg.runtime``), an autocast context active only on CUDA,
the default batch size for a device and host copies through pinned memory."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator

import numpy as np
import torch

from protoseg.runtime import select_device

__all__ = ["amp_dtype", "autocast_for", "default_batch_size", "select_device", "to_host"]

logger = logging.getLogger(__name__)


def amp_dtype(device: torch.device, name: str = "auto") -> torch.dtype:
    """Autocast dtype: ``bf16`` / ``fp16`` as asked; ``auto`` = bfloat16 where the GPU supports it, else float16."""
    name = str(name).lower()
    if name in ("bf16", "bfloat16"):
        return torch.bfloat16
    if name in ("fp16", "float16", "half"):
        return torch.float16
    if name != "auto":
        raise ValueError(f"amp dtype must be auto, bf16 or fp16, got {name!r}")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@contextlib.contextmanager
def autocast_for(device: torch.device, amp: bool, dtype: torch.dtype | None = None) -> Iterator[None]:
    """Mixed precision (``dtype``, default float16) only on CUDA when ``amp``; a no-op elsewhere."""
    if amp and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=dtype or torch.float16):
            yield
    else:
        yield


def default_batch_size(device: torch.device, tile_size: int = 224) -> int:
    """Tiles per model call: 16 on CPU/MPS; on CUDA ~2 per GiB of device memory at 224 px (16..512)."""
    if device.type != "cuda":
        return 16
    total_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    per_224 = 2.0 * total_gib * (224 / max(int(tile_size), 1)) ** 2
    return int(min(512, max(16, 2 ** int(math.log2(max(per_224, 1))))))


def to_host(t: torch.Tensor) -> np.ndarray:
    """A device tensor as a numpy array: through a pinned buffer with an asynchronous copy on CUDA."""
    if t.device.type != "cuda":
        return t.detach().numpy()
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    torch.cuda.current_stream(t.device).synchronize()
    return host.numpy()
