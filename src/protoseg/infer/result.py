"""The summary of a whole-slide batch prediction: a plain record, importable without torch (a GUI unpickles
it from the child process that ran the prediction)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class BatchResult:
    """Summary of one slide's batch prediction."""

    path: Path
    chunks_total: int
    chunks_resumed: int
    chunks_background: int
    chunks_predicted: int
    tiles_predicted: int
    seconds: float
