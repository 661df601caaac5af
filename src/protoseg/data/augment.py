"""Composable tensor augmentations for sample dicts; geometry is applied to image and mask alike."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

# Ruifrok & Johnston optical-density vectors (rows: haematoxylin, eosin, DAB/residual).
_RGB_FROM_HED = torch.tensor([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=torch.float64)
_RGB_FROM_HED = _RGB_FROM_HED / _RGB_FROM_HED.norm(dim=1, keepdim=True)
_HED_FROM_RGB = torch.linalg.inv(_RGB_FROM_HED)
_OD_EPS = 1e-6
#: HED stain jitter strength (alpha = beta) of the default training augmentation.
DEFAULT_STAIN = 0.05


def _uniform(lo: float, hi: float, g: torch.Generator | None, n: int = 1) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


class Augmentation:
    """Base class: ``aug(sample, generator)`` returns a new sample dict (inputs are not modified)."""

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        out = dict(sample)
        image, mask = self.apply(sample["image"], sample.get("mask"), generator)
        out["image"] = image
        if mask is not None:
            out["mask"] = mask
        return out

    def apply(self, image: torch.Tensor, mask: torch.Tensor | None, g: torch.Generator | None):
        raise NotImplementedError


class RandomFlip(Augmentation):
    """Flip left-right and/or up-down, each with probability ``p``."""

    def __init__(self, horizontal: bool = True, vertical: bool = True, p: float = 0.5) -> None:
        self.horizontal, self.vertical, self.p = horizontal, vertical, p

    def apply(self, image, mask, g):
        for enabled, dim in ((self.horizontal, -1), (self.vertical, -2)):
            if enabled and torch.rand(1, generator=g).item() < self.p:
                image = image.flip(dim)
                mask = mask.flip(dim) if mask is not None else None
        return image, mask


class RandomRot90(Augmentation):
    """Rotate by a uniformly drawn multiple of 90 degrees (counter-clockwise)."""

    def apply(self, image, mask, g):
        k = int(torch.randint(0, 4, (1,), generator=g).item())
        if k == 0:
            return image, mask
        image = torch.rot90(image, k, dims=(-2, -1))
        return image, (torch.rot90(mask, k, dims=(-2, -1)) if mask is not None else None)


class ColorJitter(Augmentation):
    """Small brightness / contrast / saturation changes; factors drawn from U(1-x, 1+x)."""

    def __init__(self, brightness: float = 0.1, contrast: float = 0.1, saturation: float = 0.1) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation

    def apply(self, image, mask, g):
        b, c, s = (_uniform(1 - x, 1 + x, g).item() for x in (self.brightness, self.contrast, self.saturation))
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=image.dtype).view(3, 1, 1)
        out = image * b
        gray = (out * weights).sum(dim=0, keepdim=True)
        out = (out - gray.mean()) * c + gray.mean()
        gray = (out * weights).sum(dim=0, keepdim=True)
        out = gray + (out - gray) * s
        return out.clamp(0.0, 1.0), mask


def _working(t: torch.Tensor) -> torch.Tensor:
    """float64 stays float64 (reference maths); anything else is computed in float32 (~3x faster)."""
    return t if t.dtype == torch.float64 else t.float()


def rgb_to_hed(image: torch.Tensor) -> torch.Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> (..., 3, H, W) H, E, D stain concentrations (optical-density units).

    Computed in float32 unless the input is float64, on the input's device (a batch on the GPU works).
    """
    od = -torch.log10(_working(image).clamp_min(_OD_EPS))
    return torch.einsum("...chw,cd->...dhw", od, _HED_FROM_RGB.to(device=od.device, dtype=od.dtype))


def hed_to_rgb(hed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`rgb_to_hed`, clamped to [0, 1] (same dtype rule)."""
    hed = _working(hed)
    od = torch.einsum("...dhw,dc->...chw", hed, _RGB_FROM_HED.to(device=hed.device, dtype=hed.dtype))
    return torch.pow(10.0, -od).clamp_(0.0, 1.0)


class HEDJitter(Augmentation):
    """Tellez-style stain jitter: each HED channel c -> c * U(1-a, 1+a) + U(-b, b)."""

    def __init__(self, alpha: float = DEFAULT_STAIN, beta: float = DEFAULT_STAIN) -> None:
        self.alpha, self.beta = alpha, beta

    def apply(self, image, mask, g):
        return self.apply_batch(image[None], g)[0], mask

    def apply_batch(self, images: torch.Tensor, g: torch.Generator | None = None) -> torch.Tensor:
        """Jitter a (B, 3, H, W) batch where it lives (e.g. on the GPU), one draw per image (float32 unless
        float64). The draws (on the CPU, from ``g``) come image by image, 3 scales then 3 shifts each: a
        batch gets exactly what jittering its images one after the other from the same generator gives."""
        b = images.shape[0]
        u = torch.rand(b, 2, 3, generator=g, dtype=torch.float64)
        scale = 1 - self.alpha + 2 * self.alpha * u[:, 0]
        shift = -self.beta + 2 * self.beta * u[:, 1]
        # hed = od @ HED_FROM_RGB, od' = (hed * scale + shift) @ RGB_FROM_HED with od = -log10(rgb): per image
        # one 3x3 map and an offset in log space, ln rgb' = mix @ ln rgb - ln(10) * shift @ RGB_FROM_HED,
        # so a pixel costs one log, one 3x3 product and one exp (same result as rgb_to_hed/hed_to_rgb)
        mix = torch.einsum("dc,bd,ed->bce", _RGB_FROM_HED, scale, _HED_FROM_RGB)
        offset = -math.log(10.0) * (shift @ _RGB_FROM_HED)
        x = _working(images)
        log_rgb = x.reshape(b, 3, -1).clamp_min(_OD_EPS).log_()
        out = torch.baddbmm(offset.unsqueeze(-1).to(x), mix.to(x), log_rgb)
        return out.exp_().clamp_(0.0, 1.0).view(images.shape).to(images.dtype)


class SampleKey(int):
    """A dataset index carrying the seed of one augmentation draw (the training sampler's keys); a dataset
    that knows nothing of augmentation seeds indexes with it as with the plain int it is."""

    seed: int

    def __new__(cls, index: int, seed: int) -> SampleKey:
        key = super().__new__(cls, index)
        key.seed = int(seed)
        return key

    def __getnewargs__(self) -> tuple[int, int]:  # pickled to DataLoader workers with its seed
        return int(self), self.seed

    def __repr__(self) -> str:
        return f"SampleKey({int(self)}, seed={self.seed})"


def sample_generator(seed: int | None, draw: int) -> torch.Generator:
    """A fresh generator that is a pure function of a pipeline ``seed`` and one sample's ``draw`` seed."""
    entropy = [int(draw)] if seed is None else [int(seed), int(draw)]
    mixed = np.random.SeedSequence([v % 2**64 for v in entropy]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(mixed))


class Compose:
    """Apply augmentations in order; with ``seed`` set, unkeyed draws come from one private generator."""

    def __init__(self, transforms: Sequence[Augmentation], seed: int | None = None) -> None:
        self.transforms = list(transforms)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        g = generator if generator is not None else self.generator
        for t in self.transforms:
            sample = t(sample, g)
        return sample


def apply_transform(transform: Callable[[dict], dict] | None, sample: dict, key: int) -> dict:
    """``transform(sample)`` for the sample at ``key``. A :class:`SampleKey` gives a :class:`Compose` a generator
    of its own (``sample_generator(compose.seed, key.seed)``): the same draw in any worker or process."""
    if transform is None:
        return sample
    if isinstance(key, SampleKey) and isinstance(transform, Compose):
        return transform(sample, sample_generator(transform.seed, key.seed))
    return transform(sample)


def default_augmentation(seed: int | None = None, stain: float = DEFAULT_STAIN, with_stain: bool = True) -> Compose:
    """Flips, rot90, small colour and HED stain jitter: the usual histology training augmentation
    (``with_stain=False``: without the stain jitter, which the trainer then applies batched on the device)."""
    stains = [HEDJitter(alpha=stain, beta=stain)] if with_stain else []
    return Compose([RandomFlip(), RandomRot90(), ColorJitter(), *stains], seed=seed)


__all__ = [
    "DEFAULT_STAIN",
    "Augmentation",
    "ColorJitter",
    "Compose",
    "HEDJitter",
    "RandomFlip",
    "RandomRot90",
    "SampleKey",
    "apply_transform",
    "default_augmentation",
    "hed_to_rgb",
    "rgb_to_hed",
    "sample_generator",
]
