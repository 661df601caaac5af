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


#: Class-balanced draws repeat a patch at most this many times as often as a patch of the most common class:
#: a class held by a handful of patches is not drawn in every batch (WSSS4LUAD's NOR, in 14 %: 5.7x).
MAX_OVERSAMPLING = 10.0


def balanced_weights(labels: np.ndarray) -> np.ndarray:
    """(N,) draw weights of N patches with (N, C) image-level labels that make each class about equally
    frequent among the draws: a patch weighs 1 / (share of patches holding its rarest class), at most
    ``MAX_OVERSAMPLING`` x that of the most common class; a patch with no class weighs as one of the most
    common class. Labels of any dtype; a class no patch holds is ignored."""
    held = np.asarray(labels) > 0
    if held.ndim != 2:
        raise ValueError(f"labels must be (patches, classes), got shape {held.shape}")
    share = held.mean(axis=0) if len(held) else np.zeros(held.shape[1])
    inverse = np.where(share > 0, 1.0 / np.maximum(share, 1e-12), 0.0)
    weights = (held * inverse[None]).max(axis=1, initial=0.0)
    floor = inverse[inverse > 0].min() if (inverse > 0).any() else 1.0
    return np.clip(np.where(weights > 0, weights, floor), floor, MAX_OVERSAMPLING * floor)


def _weighted_draw(weights: torch.Tensor, n: int, generator: torch.Generator) -> list[int]:
    return torch.multinomial(weights, n, replacement=True, generator=generator).tolist()


class KeyedRandomSampler(Sampler[SampleKey]):
    """Each epoch a permutation of ``range(n)`` (or, with ``weights``, ``n`` draws with replacement in
    proportion to them) and one augmentation seed per sample, all drawn from ``generator`` (the trainer's
    data-order generator, part of the resumable run state)."""

    def __init__(self, n: int, generator: torch.Generator, weights: np.ndarray | None = None) -> None:
        self.n, self.generator = int(n), generator
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))
        if self.weights is not None and self.weights.shape != (self.n,):
            raise ValueError(f"{tuple(self.weights.shape)} sample weights for {self.n} samples")

    def __len__(self) -> int:
        return self.n

    def __iter__(self) -> Iterator[SampleKey]:
        if self.weights is None:
            order = torch.randperm(self.n, generator=self.generator).tolist()
        else:
            order = _weighted_draw(self.weights, self.n, self.generator)
        seeds = _draw_seeds(self.n, self.generator)
        return iter([SampleKey(i, s) for i, s in zip(order, seeds)])


class KeyedDistributedSampler(DistributedSampler):
    """``DistributedSampler`` (this rank's share, reshuffled by ``set_epoch``) whose indices carry an
    augmentation seed per sample and epoch, a pure function of (seed, epoch, index): every rank agrees.
    With ``weights`` every rank makes the same weighted draw of the whole epoch and takes its share."""

    def __init__(self, dataset: Dataset, *, weights: np.ndarray | None = None, **kwargs: object) -> None:
        super().__init__(dataset, **kwargs)  # type: ignore[arg-type]
        self.weights = None if weights is None else torch.as_tensor(np.asarray(weights, dtype=np.float64))

    def __iter__(self) -> Iterator[SampleKey]:  # type: ignore[override]
        mixed = np.random.SeedSequence([self.seed % 2**64, self.epoch, _STREAM]).generate_state(1, np.uint64)[0]
        generator = torch.Generator().manual_seed(int(mixed))
        seeds = _draw_seeds(len(self.dataset), generator)  # type: ignore[arg-type]
        if self.weights is None:
            return iter([SampleKey(i, seeds[i]) for i in super().__iter__()])
        draws = _weighted_draw(self.weights, self.total_size, generator)
        return iter([SampleKey(i, seeds[i]) for i in draws[self.rank : self.total_size : self.num_replicas]])


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
    dataset: Dataset, generator: torch.Generator, seed: int, distributed: bool, weights: np.ndarray | None = None
) -> KeyedRandomSampler | KeyedDistributedSampler:
    """The sampler of a training loader: shuffled keys from ``generator``, or this rank's share under DDP;
    with ``weights`` (one per sample) draws with replacement in proportion to them."""
    if distributed:
        return KeyedDistributedSampler(dataset, shuffle=True, seed=seed, weights=weights)
    return KeyedRandomSampler(len(dataset), generator, weights)  # type: ignore[arg-type]


def sample_labels(dataset: Dataset) -> np.ndarray | None:
    """(N, C) image-level labels of a training dataset without reading its images (a folder split, slide
    regions, a subset of one, or stage 2's pseudo-mask pairs of one); None when it cannot tell."""
    if isinstance(dataset, Subset):
        inner = sample_labels(dataset.dataset)
        return None if inner is None else inner[np.asarray(dataset.indices, dtype=np.int64)]
    images = getattr(dataset, "images", None)  # PseudoMaskDataset: the training patches it pairs
    if isinstance(images, Dataset):
        return sample_labels(images)
    labels = getattr(dataset, "labels", None)
    return np.asarray(labels(), dtype=np.float32) if callable(labels) else None


__all__ = [
    "MAX_OVERSAMPLING",
    "KeyedDistributedSampler",
    "KeyedRandomSampler",
    "KeyedSubset",
    "balanced_weights",
    "sample_labels",
    "training_sampler",
]
