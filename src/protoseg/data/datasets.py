"""Patch datasets (torch ``Dataset``) yielding image, image-level label, optional mask and name."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from protoseg.classes import ClassSpec
from protoseg.config_ranges import RANGES
from protoseg.data.augment import apply_transform
from protoseg.data.cache import CacheMode, DecodedCache
from protoseg.data.errors import DataError, DatasetLayoutError
from protoseg.data.generic import generic_records
from protoseg.data.layouts import detect_layout, named_records
from protoseg.data.masks import labels_from_mask, load_mask
from protoseg.data.records import Layout, PatchRecord, Split
from protoseg.data.resample import rescale_image, rescale_mask
from protoseg.slide.pixels import as_rgb_uint8

logger = logging.getLogger(__name__)

Transform = Callable[[dict], dict]


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as uint8 RGB (H, W, 3); alpha is composited onto white (``as_rgb_uint8``)."""
    try:
        with Image.open(path) as im:
            return np.array(as_rgb_uint8(im))  # a writable copy
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises for damaged files
        raise DataError(
            f"{path}: cannot read the image ({exc}); replace or remove the file "
            "(`protoseg data check DIR` lists every bad file)"
        ) from exc


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file from its header (no pixels decoded)."""
    with Image.open(path) as im:
        return im.size


def to_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float32 (3, H, W) in [0, 1]."""
    rgb = np.ascontiguousarray(rgb)
    if not rgb.flags.writeable:
        rgb = rgb.copy()
    return torch.from_numpy(rgb).permute(2, 0, 1).float().div_(255.0)


class PatchDataset(Dataset):
    """Patches listed as :class:`PatchRecord`; ``transform`` maps a sample dict to a sample dict."""

    def __init__(
        self,
        records: Sequence[PatchRecord],
        classes: ClassSpec,
        *,
        root: str | Path | None = None,
        layout: Layout | None = None,
        split: Split | None = None,
        transform: Transform | None = None,
        cache: CacheMode | str = CacheMode.MMAP,
        scale: float = 1.0,
    ) -> None:
        """``cache``: keep decoded uint8 patches (``protoseg.data.cache``) so later epochs skip PNG decoding;
        ``scale``: every image and mask is resampled by it (``data.scale``: 0.5 trains at half the resolution)."""
        if RANGES["data.scale"].problem(scale):
            raise ValueError(f"scale must be {RANGES['data.scale'].describe()}, got {scale}")
        self.scale = float(scale)
        self.records = tuple(records)
        self.classes = classes
        self.root = Path(root) if root is not None else None
        self.layout = layout
        self.split = split
        self.transform = transform
        self._mask_labels: dict[int, np.ndarray] = {}
        self._cache = DecodedCache(len(self.records), cache)
        if self._cache.mode is CacheMode.MMAP and self.records:
            try:  # creates the shared file now, before DataLoader workers fork
                self._cache.put(0, self._read(0))
            except (DataError, OSError):
                pass  # reported with the file name when the sample is read

    def __len__(self) -> int:
        return len(self.records)

    def _read(self, index: int) -> np.ndarray:
        return rescale_image(load_image(self.records[index].image), self.scale)

    def image(self, index: int) -> np.ndarray:
        """uint8 (H, W, 3) pixels of one patch as the model sees them (resampled by ``scale``, not augmented)."""
        rgb = self._cache.get(index)
        if rgb is None:
            rgb = self._read(index)
            self._cache.put(index, rgb)
        return rgb

    def label(self, index: int) -> np.ndarray:
        """Image-level multi-hot label (C,) of one patch, from its name or (val/test) its mask."""
        rec = self.records[index]
        if rec.label is not None:
            return np.asarray(rec.label, dtype=np.float32)
        if index not in self._mask_labels:
            mask = rescale_mask(load_mask(rec.mask, self.classes), self.scale)
            self._mask_labels[index] = labels_from_mask(mask, self.classes.num_classes)
        return self._mask_labels[index]

    def masked(self) -> list[int]:
        """Indices of the patches that have a mask (the ones validation and evaluation can score)."""
        return [i for i, rec in enumerate(self.records) if rec.mask is not None]

    def describe(self) -> str:
        """``the val split of ROOT`` (for messages)."""
        split = f"the {self.split.value} split" if self.split is not None else "the dataset"
        return f"{split} of {self.root}" if self.root is not None else split

    def labels(self) -> np.ndarray:
        """All image-level labels as an (N, C) float32 array (loads masks once where needed)."""
        if not self.records:
            return np.zeros((0, self.classes.num_classes), np.float32)
        return np.stack([self.label(i) for i in range(len(self))])

    def __getitem__(self, key: int) -> dict:
        """The sample at ``key`` (an index, or a ``SampleKey`` whose seed picks the augmentation draw)."""
        index = int(key)
        rec = self.records[index]
        rgb = self.image(index)
        sample: dict = {"image": to_tensor(rgb), "name": rec.name}
        if rec.mask is not None:
            mask = load_mask(rec.mask, self.classes)
            native = (rgb.shape[1], rgb.shape[0]) if self.scale == 1 else image_size(rec.image)
            if (mask.shape[1], mask.shape[0]) != native:
                raise DatasetLayoutError(
                    f"mask {rec.mask} is {mask.shape[1]}x{mask.shape[0]}, a different size from image {rec.image}; "
                    "masks must match their image size"
                )
            mask = rescale_mask(mask, self.scale)
            sample["mask"] = torch.from_numpy(mask)
            label = labels_from_mask(mask, self.classes.num_classes) if rec.label is None else rec.label
        else:
            label = rec.label
        sample["label"] = torch.as_tensor(np.asarray(label, dtype=np.float32))
        return apply_transform(self.transform, sample, key)

    def __repr__(self) -> str:
        return (
            f"PatchDataset({len(self)} patches, classes={list(self.classes.names)}, "
            f"layout={getattr(self.layout, 'value', None)}, split={getattr(self.split, 'value', None)}, "
            f"scale={self.scale:g}, "
            f"root={self.root})"
        )


def open_dataset(
    root: str | Path,
    split: Split | str = Split.TRAIN,
    layout: Layout | str | None = None,
    transform: Transform | None = None,
    scale: float = 1.0,
) -> PatchDataset:
    """Open one split of a patch dataset folder, its patches resampled by ``scale``; the layout is detected when
    not given."""
    root = Path(root)
    split = Split(split)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist or is not a folder")
    layout = Layout(layout) if layout is not None else detect_layout(root)
    if layout == Layout.GENERIC:
        spec, records = generic_records(root, split)
    else:
        spec, records = named_records(root, split, layout)
    logger.info("opened %s split of %s (%s): %d patches", split.value, root, layout.value, len(records))
    return PatchDataset(records, spec, root=root, layout=layout, split=split, transform=transform, scale=scale)
