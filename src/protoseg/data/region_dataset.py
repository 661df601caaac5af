"""Sample class-tagged slide regions into fixed-size patches at a target mpp, read lazily."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from skimage.measure import points_in_poly
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.data.datasets import Transform, to_tensor
from protoseg.data.errors import RegionError
from protoseg.data.regions import RegionAnnotation
from protoseg.slide.resample import read_at_scale

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionPatch:
    """A patch box (level-0 x, y, width, height) on a slide with its image-level label."""

    slide_path: str
    box: tuple[int, int, int, int]
    label: tuple[int, ...]


def _default_opener(path: str):
    from protoseg.slide import open_slide

    return open_slide(path)


def _inside_fraction(polygon: np.ndarray, x: float, y: float, side: float, k: int) -> float:
    """Fraction of a k x k grid of sample points of the square (x, y, side) inside the polygon."""
    t = (np.arange(k) + 0.5) / k * side
    gx, gy = np.meshgrid(x + t, y + t)
    return float(points_in_poly(np.stack([gx.ravel(), gy.ravel()], axis=1), polygon).mean())


def _boxes_meet(bounds: tuple[float, float, float, float], x: float, y: float, side: float) -> bool:
    """Whether a region's bounding box intersects the square patch (x, y, side)."""
    return bounds[0] < x + side and bounds[2] > x and bounds[1] < y + side and bounds[3] > y


class WsiRegionDataset(Dataset):
    """Patches of ``patch_size`` px at ``mpp`` tiled over tagged regions; label = union of overlapping tags.

    Slides are opened lazily in each process (handles are dropped when pickled for DataLoader
    workers); the index is built from geometry and each slide's mpp (read once, then closed).
    ``slide_opener`` returns a ``protoseg.slide.SlideLike`` (default ``open_slide``); patches are
    read with ``protoseg.slide.read_at_scale``.
    """

    def __init__(
        self,
        regions: Sequence[RegionAnnotation],
        classes: ClassSpec | Sequence[str],
        mpp: float,
        patch_size: int = 224,
        stride: int | None = None,
        min_inside: float = 0.5,
        jitter: float = 0.0,
        seed: int = 0,
        fallback_mpp: float | None = None,
        transform: Transform | None = None,
        slide_opener: Callable[[str], object] | None = None,
        samples_per_side: int = 16,
    ) -> None:
        self.classes = classes if isinstance(classes, ClassSpec) else ClassSpec(names=tuple(classes))
        if mpp <= 0 or patch_size <= 0:
            raise RegionError(f"mpp and patch_size must be positive (got {mpp}, {patch_size})")
        self.regions = tuple(regions)
        unknown = sorted({c for r in self.regions for c in r.classes} - set(self.classes.names))
        if unknown:
            raise RegionError(
                f"region tags {unknown} are not classes {list(self.classes.names)}; fix the tags or the ClassSpec"
            )
        self.mpp, self.patch_size = float(mpp), int(patch_size)
        self.stride = int(stride or patch_size)
        self.min_inside, self.jitter = float(min_inside), float(jitter)
        self.fallback_mpp = fallback_mpp
        self.transform = transform
        self.slide_opener = slide_opener
        self._k = samples_per_side
        self._slides: dict[str, object] = {}
        self.slide_mpp: dict[str, float | None] = {}
        self.patches = self._build_index(np.random.default_rng(seed))
        logger.info(
            "%d patches from %d regions on %d slides", len(self.patches), len(self.regions), len(self.slide_mpp)
        )

    # -- slides ---------------------------------------------------------------------------
    def _open(self, path: str):
        return (self.slide_opener or _default_opener)(path)

    def _slide(self, path: str):
        if path not in self._slides:
            self._slides[path] = self._open(path)
        return self._slides[path]

    def _scale(self, path: str) -> float:
        """Level-0 pixels per target pixel for a slide."""
        if path not in self.slide_mpp:
            slide = self._open(path)
            self.slide_mpp[path] = getattr(slide, "mpp", None)
            if hasattr(slide, "close"):
                slide.close()
        smpp = self.slide_mpp[path] or self.fallback_mpp
        if smpp is None:
            raise RegionError(
                f"slide {path} has no microns-per-pixel metadata; pass fallback_mpp= (e.g. 0.5 for 20x) "
                "to WsiRegionDataset"
            )
        return self.mpp / float(smpp)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_slides"] = {}  # open handles stay in the process that opened them
        return state

    # -- index ----------------------------------------------------------------------------
    def _build_index(self, rng: np.random.Generator) -> list[RegionPatch]:
        seen: set[tuple[str, int, int]] = set()
        patches: list[RegionPatch] = []
        for region in self.regions:
            f = self._scale(region.slide_path)
            side, step = self.patch_size * f, self.stride * f
            x0, y0, x1, y1 = region.bounds
            others = [r for r in self.regions if r.slide_path == region.slide_path]
            nx = max(1, math.floor((x1 - x0 - side) / step) + 1)
            ny = max(1, math.floor((y1 - y0 - side) / step) + 1)
            # centre the grid on the bounding box so small regions still get a patch
            ox = x0 + ((x1 - x0) - (side + (nx - 1) * step)) / 2
            oy = y0 + ((y1 - y0) - (side + (ny - 1) * step)) / 2
            for j in range(ny):
                for i in range(nx):
                    dx, dy = (rng.uniform(-1, 1, 2) * self.jitter * step) if self.jitter else (0.0, 0.0)
                    x, y = ox + i * step + dx, oy + j * step + dy
                    if _inside_fraction(region.polygon, x, y, side, self._k) < self.min_inside:
                        continue
                    key = (region.slide_path, round(x), round(y))
                    if key in seen:
                        continue
                    seen.add(key)
                    tags = {
                        c
                        for r in others
                        if _boxes_meet(r.bounds, x, y, side)
                        for c in r.classes
                        if _inside_fraction(r.polygon, x, y, side, self._k) > 0
                    }
                    label = tuple(int(n in tags) for n in self.classes.names)
                    box = (round(x), round(y), max(1, round(side)), max(1, round(side)))
                    patches.append(RegionPatch(region.slide_path, box, label))
        return patches

    def labels(self) -> np.ndarray:
        """All image-level labels as an (N, C) float32 array."""
        return np.array([p.label for p in self.patches], dtype=np.float32).reshape(-1, self.classes.num_classes)

    def __len__(self) -> int:
        return len(self.patches)

    def read_patch(self, index: int) -> np.ndarray:
        """uint8 (patch_size, patch_size, 3) pixels of one patch at the target mpp.

        The level-0 box (whose side is ``patch_size`` times the slide's scale, rounded) is resampled
        once to exactly ``patch_size``; the scale, fallback mpp included, was fixed at indexing time.
        """
        p = self.patches[index]
        return read_at_scale(self._slide(p.slide_path), p.box, (self.patch_size, self.patch_size))

    def __getitem__(self, index: int) -> dict:
        p = self.patches[index]
        sample = {
            "image": to_tensor(self.read_patch(index)),
            "label": torch.tensor(p.label, dtype=torch.float32),
            "name": f"{Path(p.slide_path).stem}_x{p.box[0]}_y{p.box[1]}",
            "box": torch.tensor(p.box, dtype=torch.long),
        }
        return self.transform(sample) if self.transform is not None else sample
