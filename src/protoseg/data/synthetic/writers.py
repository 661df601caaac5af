"""Write synthetic data to disk: a BCSS-WSSS patch dataset and a small pyramidal slide + mask."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.classes import BCSS_WSSS
from protoseg.data.masks import labels_from_mask, save_palette_mask
from protoseg.data.synthetic.layout import random_layout
from protoseg.data.synthetic.noise import smooth_noise
from protoseg.data.synthetic.render import render_tissue
from protoseg.slide.formats import slide_stem

logger = logging.getLogger(__name__)

_SPLITS = {"train": 0, "val": 1, "test": 2}


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    """Independent stream per (seed, split, index): one image does not depend on the counts."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_SPLITS[split], index)))


def synthetic_patch(
    seed: int,
    split: str,
    index: int,
    size: int = 224,
    n_classes_range: tuple[int, int] = (1, 3),
    background_prob: float = 0.3,
):
    """(rgb uint8 (H, W, 3), label map int64 (H, W)) of one synthetic patch, deterministic."""
    rng = _rng(seed, split, index)
    label_map = random_layout(size, rng, n_classes_range=n_classes_range, background_prob=background_prob)
    return render_tissue(label_map, rng), label_map


def write_bcss_dataset(
    root: str | Path,
    n_train: int = 200,
    n_val: int = 40,
    n_test: int = 40,
    size: int = 224,
    seed: int = 0,
    mpp: float = 0.5,
) -> Path:
    """Write synthetic patches in the BCSS-WSSS layout (train names carry labels; val/test masks)."""
    root = Path(root)
    spec = BCSS_WSSS
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        folder = root / split
        if split == "train":
            folder.mkdir(parents=True, exist_ok=True)
        else:
            (folder / "img").mkdir(parents=True, exist_ok=True)
            (folder / "mask").mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rgb, label_map = synthetic_patch(seed, split, i, size)
            if split == "train":
                bits = "".join(str(int(v)) for v in labels_from_mask(label_map, spec.num_classes))
                Image.fromarray(rgb).save(folder / f"synth_{i:06d}_MPP-{mpp:.4f}+0[{bits}].png")
            else:
                name = f"synth_{split}_{i:06d}.png"
                Image.fromarray(rgb).save(folder / "img" / name)
                save_palette_mask(folder / "mask" / name, label_map, spec)
    logger.info("wrote synthetic BCSS-WSSS dataset to %s (%d/%d/%d)", root, n_train, n_val, n_test)
    return root


@dataclass(frozen=True)
class SyntheticSlide:
    """Paths of a written synthetic slide and its ground-truth mask (P-mode, BCSS palette)."""

    path: Path
    mask_path: Path
    mpp: float
    size: tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """How a synthetic slide is rendered: ``size`` (width, height) px, ``mpp``, ``seed`` and TIFF ``tile_size``.

    The defaults are those of the plugin's sample slide (``sample_data/synthetic_slide.tiff``, made by
    ``protoseg synth slide`` with its defaults): :data:`SAMPLE_SLIDE`.
    """

    size: tuple[int, int] = (3072, 2304)
    mpp: float = 0.5
    seed: int = 0
    tile_size: int = 256

    def write(self, path: str | Path) -> SyntheticSlide:
        """Render this slide into ``path`` (pyramidal TIFF) and its mask."""
        return write_synthetic_slide(path, size=self.size, mpp=self.mpp, seed=self.seed, tile_size=self.tile_size)


#: The plugin's sample slide and the defaults of ``protoseg synth slide``.
SAMPLE_SLIDE = SyntheticSlideSpec()


def mask_path_for(path: str | Path) -> Path:
    """``<stem>_mask.png`` beside a slide (``.ome.tif``-style double suffixes are stripped)."""
    path = Path(path)
    return path.with_name(f"{slide_stem(path.name)}_mask.png")


def slide_layout(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Label map of a tissue section: all four classes in large regions inside an irregular outline."""
    w, h = size
    label = random_layout(
        (h, w), rng, n_classes_range=(4, 4), background_prob=0.0, scale=max(h, w) / 4, min_fraction=0.08
    )
    yy, xx = np.mgrid[0:h, 0:w]
    radial = ((yy - h / 2) / (0.48 * h)) ** 2 + ((xx - w / 2) / (0.48 * w)) ** 2
    outline = 1.0 - radial + 0.25 * smooth_noise((h, w), max(h, w) / 5, rng) + 0.05 * smooth_noise((h, w), 12, rng)
    label[outline < 0.05] = BCSS_WSSS.background_index
    return label


def write_synthetic_slide(
    path: str | Path,
    size: tuple[int, int] = (2048, 1536),
    mpp: float = 0.5,
    seed: int = 0,
    tile_size: int = 256,
    compression: str = "jpeg",
    quality: int = 90,
) -> SyntheticSlide:
    """Render a synthetic section of ``size`` (width, height) and write it as a pyramidal TIFF + mask."""
    from protoseg.slide.writer import write_pyramidal_tiff

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,)))
    label_map = slide_layout((int(size[0]), int(size[1])), rng)
    rgb = render_tissue(label_map, rng, variants=3)
    write_pyramidal_tiff(path, rgb, mpp, tile_size=tile_size, compression=compression, quality=quality)
    mask_path = mask_path_for(path)
    save_palette_mask(mask_path, label_map, BCSS_WSSS)
    logger.info("wrote synthetic slide %s (%dx%d at %.3f um/px) and mask %s", path, size[0], size[1], mpp, mask_path)
    return SyntheticSlide(path=path, mask_path=mask_path, mpp=float(mpp), size=(int(size[0]), int(size[1])))
