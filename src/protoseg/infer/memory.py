"""An in-memory slide over a numpy RGB image, so any array (a napari layer, a PNG already loaded,
a synthetic test image) can go through the same slide-scale prediction code as a WSI."""

from __future__ import annotations

import numpy as np


class ArraySlide:
    """Slide-like view of an (H, W, 3) uint8 image with 2x-downsampled levels (block means)."""

    def __init__(self, image: np.ndarray, mpp: float | None = None, levels: int = 1, name: str = "array") -> None:
        image = np.asarray(image)
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"ArraySlide needs a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
        self.name = name
        self.mpp = mpp
        self._levels = [image]
        for _ in range(1, max(1, int(levels))):
            prev = self._levels[-1]
            h, w = prev.shape[0] // 2, prev.shape[1] // 2
            if h < 1 or w < 1:
                break
            blocks = prev[: 2 * h, : 2 * w].reshape(h, 2, w, 2, 3).astype(np.uint16)
            self._levels.append(((blocks.sum(axis=(1, 3)) + 2) // 4).astype(np.uint8))
        base_w = image.shape[1]
        self.level_count = len(self._levels)
        self.level_dimensions = [(lv.shape[1], lv.shape[0]) for lv in self._levels]
        self.level_downsamples = [base_w / lv.shape[1] for lv in self._levels]

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """(h, w, 3) uint8 at ``level``; ``location`` in level-0 px; outside pixels are white."""
        img = self._levels[level]
        ds = self.level_downsamples[level]
        x, y = round(location[0] / ds), round(location[1] / ds)
        w, h = int(size[0]), int(size[1])
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(img.shape[1], x + w), min(img.shape[0], y + h)
        if x1 > x0 and y1 > y0:
            out[y0 - y : y1 - y, x0 - x : x1 - x] = img[y0:y1, x0:x1]
        return out
