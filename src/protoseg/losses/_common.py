"""Shared input checks and helpers for the loss functions (errors, zero-with-grad results)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from protoseg.errors import ProtosegError


class LossInputError(ProtosegError, ValueError):
    """A loss got tensors of the wrong shape, dtype or value range; the message says what to pass."""


def zero_like_graph(*tensors: Tensor) -> Tensor:
    """Return a scalar 0 connected to the inputs' graphs, so ``backward()`` works on empty batches."""
    total: Tensor | None = None
    for t in tensors:
        if t.is_floating_point():
            part = t.sum() * 0.0
            total = part if total is None else total + part
    if total is None:
        device = tensors[0].device if tensors else None
        return torch.zeros((), device=device)
    return total


def check_ndim(name: str, tensor: Tensor, ndim: int, layout: str) -> None:
    """Raise :class:`LossInputError` unless ``tensor`` has ``ndim`` dimensions (layout for the message)."""
    if tensor.ndim != ndim:
        raise LossInputError(f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(tensor.shape)}")


def check_same(name_a: str, a: int, name_b: str, b: int) -> None:
    """Raise :class:`LossInputError` when two sizes that must agree differ."""
    if a != b:
        raise LossInputError(f"{name_a} ({a}) must equal {name_b} ({b}); check the tensor shapes")


def check_positive(name: str, value: float) -> None:
    """Raise :class:`LossInputError` unless ``value`` is strictly positive."""
    if not value > 0:
        raise LossInputError(f"{name} must be > 0, got {value}")


def as_tuple(values: Sequence[float]) -> tuple[float, ...]:
    """Convert a sequence of numbers to a tuple of floats."""
    return tuple(float(v) for v in values)
