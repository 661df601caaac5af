"""Small exact models and slides shared by the protoseg.infer / export tests (no tests here)."""

from __future__ import annotations

import threading

import numpy as np
import torch
from torch import nn

from protoseg.classes import ClassSpec

CLASSES = ClassSpec(("TUM", "STR", "LYM"), colors=((255, 0, 0), (0, 255, 0), (0, 0, 255)))


class ConstantModel(nn.Module):
    """Same scores at every pixel of every tile."""

    def __init__(self, values=(0.1, 0.2, 0.3, 0.4)) -> None:
        super().__init__()
        self.register_buffer("values", torch.tensor(values, dtype=torch.float32))

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        return self.values.view(1, -1, 1, 1).expand(b, -1, h, w).clone()


class ColourModel(nn.Module):
    """Pixel-wise scores from the pixel colour: independent of tiling by construction."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        s = torch.cat([r, g, 0.5 * b, torch.full_like(r, 0.25)], dim=1)
        return s / s.sum(dim=1, keepdim=True)


class SmoothModel(nn.Module):
    """Scores from a 5x5 neighbourhood (zero-padded conv): depends on the tile borders."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        k = torch.ones(1, 1, 5, 5) / 25.0
        parts = [torch.nn.functional.conv2d(x[:, i : i + 1], k, padding=2) for i in range(3)]
        s = torch.cat([parts[0], parts[1], parts[2], 1.0 - parts[0]], dim=1) + 0.01
        return s / s.sum(dim=1, keepdim=True)


class TileMeanModel(nn.Module):
    """One score vector per tile (from the tile's mean colour): blending shows as smooth ramps."""

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))  # (B, 3)
        s = torch.cat([m, torch.full_like(m[:, :1], 0.3)], dim=1)
        s = s / s.sum(dim=1, keepdim=True)
        return s[:, :, None, None].expand(-1, -1, x.shape[2], x.shape[3]).clone()


class Counting(nn.Module):
    """Wraps a model and counts the tiles it predicts (thread-safe)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.tiles = 0
        self._lock = threading.Lock()

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        with self._lock:
            self.tiles += x.shape[0]
        return self.inner.predict(x)


def smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A random uint8 RGB image with some structure (blocks + noise)."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)[:h, :w]
    noise = rng.integers(-20, 21, (h, w, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)
