"""Stain jitter of whole training batches on the training device (``data.augment_on_device``): the dataset
keeps the cheap per-sample parts (flips, rot90, colour), the trainer step jitters each batch once it is on
the device, before the model normalises it, from a generator of its own that the resumable run state keeps."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from protoseg.config import ProtosegConfig
from protoseg.data.augment import DEFAULT_STAIN, HEDJitter

#: Mixed into the run seed so this generator's stream is not the data-order generator's one.
_STREAM = 0x57A1_4A06


def stain_on_device(cfg: ProtosegConfig) -> bool:
    """Whether training batches get their stain jitter in the trainer step (else per image in the dataset)."""
    return bool(cfg.data.augment and cfg.data.augment_on_device)


class BatchStainJitter:
    """HED stain jitter of a batch's ``image`` where it lives, one draw per image (same distribution as the
    per-image ``HEDJitter``) from a CPU generator seeded from the run seed."""

    def __init__(self, seed: int, stain: float = DEFAULT_STAIN) -> None:
        self.jitter = HEDJitter(alpha=stain, beta=stain)
        mixed = np.random.SeedSequence([int(seed) % 2**64, _STREAM]).generate_state(1, np.uint64)[0]
        self.generator = torch.Generator().manual_seed(int(mixed))

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {**batch, "image": self.jitter.apply_batch(batch["image"], self.generator)}


def batch_augment_for(cfg: ProtosegConfig, seed: int) -> BatchStainJitter | None:
    """The trainer's batch augmentation for ``cfg`` (``seed``: run seed plus the process rank), or None."""
    return BatchStainJitter(seed) if stain_on_device(cfg) else None


__all__ = ["BatchStainJitter", "batch_augment_for", "stain_on_device"]
