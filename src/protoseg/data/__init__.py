"""Datasets yielding ``{"image", "label", "mask"?, "name"}`` samples, layouts, WSI regions, augmentations.

- :func:`open_dataset` / :func:`detect_layout`: BCSS-WSSS, LUAD-HistoSeg and generic patch folders.
- :class:`WsiRegionDataset`: class-tagged polygons on slides (GeoJSON / napari shapes) as patches.
- :mod:`protoseg.data.augment`: flips, rot90, colour and HED stain jitter (seeded).
- :mod:`protoseg.data.synthetic`: H&E-like images with exact ground truth.
"""

from protoseg.data.augment import (
    ColorJitter,
    Compose,
    HEDJitter,
    RandomFlip,
    RandomRot90,
    default_augmentation,
)
from protoseg.data.datasets import PatchDataset, load_image, open_dataset
from protoseg.data.errors import DataError, DatasetLayoutError, MaskError, RegionError
from protoseg.data.layouts import detect_layout
from protoseg.data.masks import labels_from_mask, load_mask, save_palette_mask
from protoseg.data.records import Layout, PatchRecord, Split
from protoseg.data.region_dataset import (
    RegionPatch,
    RegionTiling,
    SmallRegion,
    WsiRegionDataset,
    dense_stride,
    tile_region_source,
    tile_regions,
)
from protoseg.data.regions import (
    RegionAnnotation,
    load_regions_geojson,
    regions_from_napari,
    regions_to_napari,
    save_regions_geojson,
)

__all__ = [
    "ColorJitter",
    "Compose",
    "DataError",
    "DatasetLayoutError",
    "HEDJitter",
    "Layout",
    "MaskError",
    "PatchDataset",
    "PatchRecord",
    "RandomFlip",
    "RandomRot90",
    "RegionAnnotation",
    "RegionError",
    "RegionPatch",
    "RegionTiling",
    "SmallRegion",
    "Split",
    "WsiRegionDataset",
    "default_augmentation",
    "dense_stride",
    "detect_layout",
    "labels_from_mask",
    "load_image",
    "load_mask",
    "load_regions_geojson",
    "open_dataset",
    "regions_from_napari",
    "regions_to_napari",
    "save_palette_mask",
    "save_regions_geojson",
    "tile_region_source",
    "tile_regions",
]
