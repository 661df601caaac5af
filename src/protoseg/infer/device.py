"""Pick the torch device (CUDA, then MPS, then CPU) and an autocast context that is active only on CUDA."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch

from protoseg.infer.errors import InferenceError

logger = logging.getLogger(__name__)


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA, else MPS, else CPU (logged); validate an explicit choice."""
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        if torch.cuda.is_available():
            chosen = torch.device("cuda")
        elif _mps_available():
            chosen = torch.device("mps")
        else:
            chosen = torch.device("cpu")
        logger.info("inference device: %s (auto)", chosen)
        return chosen
    try:
        chosen = torch.device(name)
    except RuntimeError as exc:
        raise InferenceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise InferenceError(f"device {device!r} asked for but CUDA is not available; use --device auto or cpu.")
    if chosen.type == "mps" and not _mps_available():
        raise InferenceError(f"device {device!r} asked for but MPS is not available; use --device auto or cpu.")
    logger.info("inference device: %s", chosen)
    return chosen


@contextlib.contextmanager
def autocast_for(device: torch.device, amp: bool) -> Iterator[None]:
    """Mixed precision (float16 autocast) only on CUDA when ``amp``; a no-op elsewhere."""
    if amp and device.type == "cuda":
        with torch.autocast(device_type="cuda", dtype=torch.float16):
            yield
    else:
        yield
