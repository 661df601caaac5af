"""Datasets yielding ``{"image", "label", "mask"?, "name"}`` samples, layouts, WSI regions, augmentations.

- :func:`open_dataset` / :func:`detect_layout`: BCSS-WSSS, LUAD-HistoSeg and generic patch folders.
- :class:`WsiRegionDataset`: class-tagged polygons on slides (GeoJSON / napari shapes) as patches.
- :mod:`protoseg.data.augment`: flips, rot90, colour and HED stain jitter (seeded).
- :mod:`protoseg.data.synthetic`: H&E-like images with exact ground truth.
"""

from __future__ import annotations

from protoseg.lazy import lazy_exports

#: public name -> module; imported on first use, so ``import protoseg.data.regions`` (a GUI's region tagging)
#: does not load torch through the augmentations
_EXPORTS = {
    "ColorJitter": "protoseg.data.augment",
    "Compose": "protoseg.data.augment",
    "DataError": "protoseg.data.errors",
    "DatasetLayoutError": "protoseg.data.errors",
    "HEDJitter": "protoseg.data.augment",
    "Layout": "protoseg.data.records",
    "MaskError": "protoseg.data.errors",
    "PatchDataset": "protoseg.data.datasets",
    "PatchRecord": "protoseg.data.records",
    "RandomFlip": "protoseg.data.augment",
    "RandomRot90": "protoseg.data.augment",
    "RegionAnnotation": "protoseg.data.regions",
    "RegionError": "protoseg.data.errors",
    "RegionPatch": "protoseg.data.region_dataset",
    "RegionTiling": "protoseg.data.region_dataset",
    "SmallRegion": "protoseg.data.region_dataset",
    "Split": "protoseg.data.records",
    "WsiRegionDataset": "protoseg.data.region_dataset",
    "default_augmentation": "protoseg.data.augment",
    "dense_stride": "protoseg.data.region_dataset",
    "detect_layout": "protoseg.data.layouts",
    "labels_from_mask": "protoseg.data.masks",
    "load_image": "protoseg.data.datasets",
    "load_mask": "protoseg.data.masks",
    "load_regions_geojson": "protoseg.data.regions",
    "open_dataset": "protoseg.data.datasets",
    "regions_from_napari": "protoseg.data.regions",
    "regions_to_napari": "protoseg.data.regions",
    "save_palette_mask": "protoseg.data.masks",
    "save_regions_geojson": "protoseg.data.regions",
    "tile_region_source": "protoseg.data.region_dataset",
    "tile_regions": "protoseg.data.region_dataset",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
