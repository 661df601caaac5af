"""Training sample order with one augmentation seed per draw: the samplers yield ``SampleKey`` (index, seed)
so a sample's augmentation depends only on the run seed and that key, never on the DataLoader worker or
process that reads it, and a resumed run (which restores the data-order generator) draws the same ones."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, Subset
from torch.utils.data.distributed import DistributedSampler

from protoseg.data.augment import SampleKey

#: Mixed into the run seed and epoch for the distributed samplers' augmentation seeds.
_STREAM = 0x5EED_A060
_SEED_BOUND = 2**62


def _draw_seeds(n: int, generator: torch.Generator) -> list[int]:
    return torch.randint(0, _SEED_BOUND, (n,), generator=generator, dtype=torch.int64).tolist()


class KeyedRandomSampler(Sampler[SampleKey]):
    """Each epoch a permutation of ``range(n)`` and one augmentation seed per sample, both drawn from
    ``generator`` (the trainer's data-order generator, part of the resumable run state)."""

    def __init__(self, n: int, generator: torch.Generator) -> None:
        self.n, self.generator = int(n), generator

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SampleKey]:
        order = torch.randperm(self.n, generator=self.generator).tolist()
        seeds = _draw_seeds(self.n, self.generator)
        return iter([SampleKey(i, s) for i, s in zip(order, seeds)])


class KeyedDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (this rank's share, reshuffled by ``set_epoch``) whose indices carry an
    augmentation seed per sample and epoch, a pure function of (seed, epoch, index): every rank agrees."""

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        mixed = np.random.SeedSequence([self.seed % 2**64, self.epoch, _STREAM]).generate_state(1, np.uint64)[0]
        seeds = _draw_seeds(len(self.dataset), torch.Generator().manual_seed(int(mixed)))  # type: ignore[arg-type]
        return iter([SampleKey(i, seeds[i]) for i in super().__iter__()])


class KeyedSubset(Subset):
    """A ``Subset`` that hands a ``SampleKey``'s augmentation seed on to the dataset it selects from."""

    def _inner(self, key: int) -> int:
        index = self.indices[int(key)]
        return SampleKey(index, key.seed) if isinstance(key, SampleKey) else index

    def __getitem__(self, key):  # type: ignore[no-untyped-def]
        if isinstance(key, list):
            return [self.dataset[self._inner(k)] for k in key]
        return self.dataset[self._inner(key)]

    def __getitems__(self, keys: list[int]) -> list:
        inner = [self._inner(k) for k in keys]
        if callable(getattr(self.dataset, "__getitems__", None)):
            return self.dataset.__getitems__(inner)  # type: ignore[attr-defined]
        return [self.dataset[i] for i in inner]


def training_sampler(
    dataset: Dataset, generator: torch.Generator, seed: int, distributed: bool
) -> KeyedRandomSampler | KeyedDistributedSampler:
    """The sampler of a training loader: shuffled keys from ``generator``, or this rank's share under DDP."""
    if distributed:
        return KeyedDistributedSampler(dataset, shuffle=True, seed=seed)
    return KeyedRandomSampler(len(dataset), generator)  # type: ignore[arg-type]


__all__ = ["KeyedDistributedSampler", "KeyedRandomSampler", "KeyedSubset", "training_sampler"]
