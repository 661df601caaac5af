"""Sample class-tagged slide regions into fixed-size patches at a target mpp, read lazily."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.data.augment import apply_transform
from protoseg.data.datasets import Transform, to_tensor
from protoseg.data.errors import RegionError
from protoseg.data.region_tiling import (  # re-exported: the tiling lives there, torch-free
    DENSE_STRIDE_FRACTION as DENSE_STRIDE_FRACTION,
)
from protoseg.data.region_tiling import (
    RegionPatch as RegionPatch,
)
from protoseg.data.region_tiling import (
    RegionTiling as RegionTiling,
)
from protoseg.data.region_tiling import (
    SmallRegion as SmallRegion,
)
from protoseg.data.region_tiling import _default_opener, _read_slide_mpp, _slide_scale
from protoseg.data.region_tiling import (
    dense_stride as dense_stride,
)
from protoseg.data.region_tiling import (
    tile_region_source as tile_region_source,
)
from protoseg.data.region_tiling import (
    tile_regions as tile_regions,
)
from protoseg.data.region_tiling import (
    within_slides as within_slides,
)
from protoseg.data.regions import RegionAnnotation
from protoseg.slide.resample import read_at_scale

logger = logging.getLogger(__name__)


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
        self.min_inside, self.jitter, self.fallback_mpp = float(min_inside), float(jitter), fallback_mpp
        self.transform, self.slide_opener = transform, slide_opener
        self._slides: dict[str, object] = {}
        self.tiling = tile_regions(
            self.regions,
            self.classes,
            self.mpp,
            self.patch_size,
            stride=self.stride,
            min_inside=self.min_inside,
            jitter=self.jitter,
            seed=seed,
            fallback_mpp=fallback_mpp,
            slide_opener=slide_opener,
        )
        self.slide_mpp: dict[str, float | None] = dict(self.tiling.slide_mpp)
        self.patches = list(self.tiling.patches)
        logger.info("%s (%d slides)", self.tiling.summary(), len(self.slide_mpp))

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
            self.slide_mpp[path] = _read_slide_mpp(path, self.slide_opener)
        return _slide_scale(path, self.mpp, self.slide_mpp, self.fallback_mpp)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_slides"] = {}  # open handles stay in the process that opened them
        return state

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

    def __getitem__(self, key: int) -> dict:  # an index, or a SampleKey (seed of the augmentation draw)
        p = self.patches[int(key)]
        sample = {
            "image": to_tensor(self.read_patch(int(key))),
            "label": torch.tensor(p.label, dtype=torch.float32),
            "name": f"{Path(p.slide_path).stem}_x{p.box[0]}_y{p.box[1]}",
            "box": torch.tensor(p.box, dtype=torch.long),
        }
        return apply_transform(self.transform, sample, key)
