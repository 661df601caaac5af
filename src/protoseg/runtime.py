"""Process-level runtime helpers shared by training and inference: device choice and seeding."""

from __future__ import annotations

import logging
import os
import random

import numpy as np
import torch

from protoseg.errors import ProtosegError

logger = logging.getLogger(__name__)


class DeviceError(ProtosegError):
    """The requested compute device is not available."""


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def select_device(device: str | torch.device = "auto") -> torch.device:
    """Resolve ``"auto"`` to CUDA, else MPS, else CPU (logged); validate an explicit choice."""
    if isinstance(device, torch.device):
        return device
    name = str(device or "auto").strip().lower()
    if name == "auto":
        chosen = torch.device("cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu")
        logger.info("device: %s (auto)", chosen)
        return chosen
    try:
        chosen = torch.device(name)
    except RuntimeError as exc:
        raise DeviceError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps.") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(f"device {device!r} asked for but CUDA is not available; use device auto or cpu.")
    if chosen.type == "mps" and not _mps_available():
        raise DeviceError(f"device {device!r} asked for but MPS is not available; use device auto or cpu.")
    logger.info("device: %s", chosen)
    return chosen


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (psutil: also right on Windows, where ``os.kill(pid, 0)``
    would send Ctrl+C)."""
    import psutil

    return bool(psutil.pid_exists(int(pid)))


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def bounded_workers(requested: int, setting: str) -> int:
    """``requested`` worker processes, at most one per available core (more only queue up, and thousands
    hang the machine); a larger request is lowered with a warning naming ``setting``."""
    cores = available_cores()
    if requested > cores:
        logger.warning("%s=%d is more than the %d CPU cores here: using %d", setting, requested, cores, cores)
        return cores
    return requested


def default_num_workers(device_type: str = "cpu", world_size: int = 1) -> int:
    """DataLoader worker processes for this machine: none on <= 2 cores (they would steal the model's
    cores); with an accelerator all cores of this rank but one (at most 8); on CPU a quarter of them."""
    cores = available_cores()
    per_rank = max(1, cores // max(1, int(world_size)))
    if per_rank <= 2:
        return 0
    return min(8, per_rank - 1) if device_type == "cuda" else min(4, per_rank // 4)


def resolve_num_workers(num_workers: int | None, device_type: str = "cpu", world_size: int = 1) -> int:
    """``num_workers`` as configured (at most one per core), or ``default_num_workers`` when it is None."""
    if num_workers is None:
        return default_num_workers(device_type, world_size)
    return bounded_workers(int(num_workers), "data.num_workers")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices); returns a torch generator for data order."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    gen = torch.Generator()
    gen.manual_seed(seed)
    return gen
