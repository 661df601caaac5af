"""Decoded-patch cache: each PNG/JPEG is decoded once per run, not once per epoch.

``DecodedCache`` keeps uint8 (H, W, 3) patches by dataset index either in process memory (``memory``)
or in a memory-mapped scratch file (``mmap``, the default) that DataLoader worker processes share:
a patch decoded by one worker is read by every later epoch and every other worker. Patches of another
size than the first one, or beyond ``max_bytes``, are simply not cached.
"""

from __future__ import annotations

import enum
import logging
import os
import shutil
import socket
import tempfile
import threading
import weakref
from typing import Any

import numpy as np

from protoseg.runtime import pid_alive

logger = logging.getLogger(__name__)

#: default bound of one dataset's cache (uint8 pixels)
MAX_CACHE_BYTES = 8 << 30


#: scratch folders are named ``protoseg-patches-<pid>-<host>-<random>`` so a later run can tell whose they are
_SCRATCH_PREFIX = "protoseg-patches-"


def _host() -> str:
    """This machine's name without dashes (a temp folder may be shared by machines or containers)."""
    return "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname()) or "host"


def sweep_stale_scratch(root: str | None = None) -> int:
    """Delete scratch folders left by killed runs (their creating process is gone); returns how many.

    A cancelled training child is killed, so its ``weakref.finalize`` never runs; the next cache cleans up.
    """
    root = root or tempfile.gettempdir()
    removed = 0
    try:
        names = os.listdir(root)
    except OSError:
        return 0
    host = _host()
    for name in names:
        if not name.startswith(_SCRATCH_PREFIX):
            continue
        parts = name[len(_SCRATCH_PREFIX) :].split("-", 2)
        if len(parts) < 3 or not parts[0].isdigit() or parts[1] != host or pid_alive(int(parts[0])):
            continue  # not ours to judge: another naming, another machine, or a live run
        folder = os.path.join(root, name)
        shutil.rmtree(folder, ignore_errors=True)
        removed += not os.path.exists(folder)
    return removed


def _remove(folder: str, owner: int) -> None:
    """Delete the scratch folder, only from the process that created it (not from forked workers)."""
    if os.getpid() == owner:
        shutil.rmtree(folder, ignore_errors=True)


class CacheMode(str, enum.Enum):
    """Where decoded patches are kept."""

    NONE = "none"
    MEMORY = "memory"  # per process (workers each fill their own copy)
    MMAP = "mmap"  # a scratch file shared by all worker processes (sparse until filled)


class DecodedCache:
    """uint8 patches by index; ``get`` returns None on a miss, ``put`` stores (silently skips what does not fit)."""

    def __init__(self, n: int, mode: CacheMode | str = CacheMode.MMAP, max_bytes: int = MAX_CACHE_BYTES) -> None:
        self.n = int(n)
        self.mode = CacheMode(mode)
        self.max_bytes = int(max_bytes)
        self._mem: dict[int, np.ndarray] = {}
        self._mem_bytes = 0
        self._dir: str | None = None
        self._shape: tuple[int, int, int] | None = None
        self._data: np.ndarray | None = None
        self._filled: np.ndarray | None = None
        self._lock = threading.Lock()

    # mmap state travels to worker processes as file paths, never as pixels
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state.update(_data=None, _filled=None, _lock=None, _owner=False)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()
        if self._dir is not None and self._shape is not None:
            self._open("r+")

    def _open(self, mode: str) -> None:
        assert self._dir is not None and self._shape is not None
        self._data = np.lib.format.open_memmap(
            os.path.join(self._dir, "pixels.npy"), mode=mode, dtype=np.uint8, shape=(self.n, *self._shape)
        )
        self._filled = np.lib.format.open_memmap(
            os.path.join(self._dir, "filled.npy"), mode=mode, dtype=np.uint8, shape=(self.n,)
        )

    def prepare(self, shape: tuple[int, ...]) -> None:
        """Create the shared scratch file now (call before DataLoader workers start, so they all share it)."""
        with self._lock:
            if self.mode is CacheMode.MMAP and self._shape is None:
                self._create(tuple(int(v) for v in shape))  # type: ignore[arg-type]

    def _create(self, shape: tuple[int, int, int]) -> bool:
        """Allocate the scratch files for patches of ``shape`` (sparse: disk is used only as patches arrive)."""
        if self.n * int(np.prod(shape)) > self.max_bytes:
            logger.info("decoded-patch cache off: %d patches of %s exceed %d bytes", self.n, shape, self.max_bytes)
            self.mode = CacheMode.NONE
            return False
        if sweep_stale_scratch():
            logger.info("removed decoded-patch scratch folders left by killed runs")
        self._dir = tempfile.mkdtemp(prefix=f"{_SCRATCH_PREFIX}{os.getpid()}-{_host()}-")
        weakref.finalize(self, _remove, self._dir, os.getpid())
        self._shape = shape
        self._open("w+")
        return True

    def get(self, index: int) -> np.ndarray | None:
        if self.mode is CacheMode.MEMORY:
            return self._mem.get(index)
        if self.mode is CacheMode.MMAP and self._filled is not None and self._filled[index]:
            return np.array(self._data[index])  # a private copy: callers may modify it
        return None

    def put(self, index: int, rgb: np.ndarray) -> None:
        if self.mode is CacheMode.NONE or rgb.dtype != np.uint8 or rgb.ndim != 3:
            return
        if self.mode is CacheMode.MEMORY:
            if self._mem_bytes + rgb.nbytes <= self.max_bytes:
                self._mem[index] = rgb.copy()
                self._mem_bytes += rgb.nbytes
            return
        with self._lock:
            if self._data is None and self._shape is None and not self._create(tuple(rgb.shape)):
                return
        if tuple(rgb.shape) != self._shape or self._data is None or self._filled is None:
            return
        self._data[index] = rgb
        self._filled[index] = 1
