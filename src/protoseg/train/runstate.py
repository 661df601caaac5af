"""What makes a resumed run continue exactly like an uninterrupted one: random-number states (python,
NumPy, torch CPU/CUDA, the data-order and batch-augmentation generators), one process per output folder
(a lock file), and a metrics log without rows of epochs that the resumed run will train again; and what
keeps a run folder's work: a fresh run never replaces an earlier run's checkpoints unless asked
(``--overwrite``), and the metrics log is appended to only as a plain file of the run folder."""

from __future__ import annotations

import json
import logging
import os
import random
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from protoseg.outputs import append_text, atomic_write_text, check_appendable
from protoseg.runtime import pid_alive
from protoseg.train.errors import TrainingError

logger = logging.getLogger(__name__)

LOCK = ".protoseg-train.lock"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
_HELD: set[Path] = set()  # locks held by this process (two threads, e.g. two GUI jobs, share a pid)


def capture_rng(generator: torch.Generator | None, augment: torch.Generator | None = None) -> dict[str, Any]:
    """Every random state a training epoch draws from (``generator``: data order and the per-sample
    augmentation seeds, ``augment``: the batch augmentation on the device), as tensors and plain lists
    (weights-only loadable)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, nxt = random.getstate()
    state: dict[str, Any] = {
        "python": [int(version), list(mt), nxt],
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }
    if generator is not None:
        state["data"] = generator.get_state()
    if augment is not None:
        state["augment"] = augment.get_state()
    return state


def restore_rng(
    state: dict[str, Any], generator: torch.Generator | None, augment: torch.Generator | None = None
) -> None:
    """Put back the states ``capture_rng`` recorded (CUDA states only when the same number of devices; a
    generator the state does not hold, e.g. from a run without batch augmentation, keeps its seed)."""
    version, mt, nxt = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), nxt))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, np.int64).astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if generator is not None and "data" in state:
        generator.set_state(state["data"])
    if augment is not None and "augment" in state:
        augment.set_state(state["augment"])


class RunLock:
    """``<out>/.protoseg-train.lock`` holding this process's pid and host; a second live process is refused,
    a lock left by a dead process (same host) is taken over."""

    def __init__(self, out_dir: str | os.PathLike[str]) -> None:
        self.path = Path(out_dir) / LOCK
        self.held = False

    def acquire(self) -> RunLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.resolve() in _HELD:
            raise TrainingError(
                f"a training in this process is already writing to {self.path.parent}; wait for it to finish "
                "or choose another output folder."
            )
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                self._check_stale(me)
                continue
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self.held = True
            _HELD.add(self.path.resolve())
            return self
        raise TrainingError(f"cannot take the training lock {self.path}; delete it if no training is running")

    def _check_stale(self, me: dict[str, Any]) -> None:
        try:
            other = json.loads(self.path.read_text(encoding="utf-8"))
            pid, host = int(other["pid"]), str(other["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, me["host"]  # unreadable: a writer died while creating it
        if host != me["host"] or (pid > 0 and pid != me["pid"] and pid_alive(pid)):
            raise TrainingError(
                f"another protoseg training (pid {pid} on {host}) is writing to {self.path.parent}; wait for it "
                f"to finish or choose another output folder (if no such process runs, delete {self.path})."
            )
        logger.warning("taking over the stale training lock %s (pid %d is gone)", self.path, pid)
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            _HELD.discard(self.path.resolve())
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def check_new_run(out_dir: str | os.PathLike[str], resume: bool, overwrite: bool) -> list[Path]:
    """The earlier run's checkpoints in ``out_dir`` that training from scratch would replace (none when
    ``resume``: they are continued); without ``overwrite`` they raise ``TrainingError`` naming the folder."""
    if resume:
        return []
    out = Path(out_dir)
    found = [out / name for name in (LAST, BEST) if (out / name).exists() or (out / name).is_symlink()]
    if found and not overwrite:
        raise TrainingError(
            f"run folder {out} already holds {found[0].name} of an earlier run; pass --resume (Train dock: 'Resume') "
            "to continue it, --overwrite (Train dock: 'Replace an earlier run') to train again from scratch, or "
            "choose another output folder."
        )
    return found


def clear_checkpoints(paths: Sequence[Path]) -> None:
    """Remove an earlier run's checkpoints before training again from scratch (``check_new_run`` with
    ``overwrite``), so none of them is mistaken for the new run's."""
    for path in paths:
        logger.warning("training again from scratch (--overwrite): removing the earlier run's %s", path)
        path.unlink(missing_ok=True)


def log_metrics(out_dir: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one JSON row to ``<out_dir>/metrics.jsonl`` (never through a link: ``outputs.append_text``)."""
    append_text(Path(out_dir) / METRICS, json.dumps(record) + "\n")


def trim_metrics(out_dir: str | os.PathLike[str], stage: str, upto_epoch: int) -> int:
    """Drop ``stage`` rows of epochs after ``upto_epoch`` from ``metrics.jsonl`` (they will be trained, and
    logged, again); rows of other stages and unreadable lines are kept. Returns how many were dropped."""
    path = Path(out_dir) / METRICS
    check_appendable(path)  # before reading it: a link to a user's file is refused, not read or replaced
    if not path.is_file():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            kept.append(line)
            continue
        if isinstance(row, dict) and row.get("stage") == stage and int(row.get("epoch", 0)) > upto_epoch:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
        logger.info("removed %d %s row(s) after epoch %d from %s", dropped, stage, upto_epoch, path)
    return dropped
