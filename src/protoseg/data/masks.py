"""Read and write class-index masks: P-mode palette PNGs, greyscale index PNGs or RGB colour masks."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.classes import IGNORE_COLOR, IGNORE_INDEX, ClassSpec
from protoseg.data.errors import MaskError

logger = logging.getLogger(__name__)

#: Share of a patch a class must cover to count as one of its labels where labels are read off a mask for
#: label-gated scoring (``eval --use-labels``, the tile baseline): 2 %, so stray annotation pixels are no label.
DEFAULT_MIN_SHARE = 0.02


def rgb_to_index(rgb: np.ndarray, classes: ClassSpec, source: str = "mask") -> np.ndarray:
    """Map an (H, W, 3) colour mask to indices 0..C (background C) using the ClassSpec palette."""
    rgb = np.asarray(rgb)[..., :3].astype(np.int64)
    codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    palette = classes.palette()
    lut_codes = np.array([(r << 16) | (g << 8) | b for r, g, b in palette], dtype=np.int64)
    order = np.argsort(lut_codes)
    pos = np.clip(np.searchsorted(lut_codes[order], codes), 0, len(palette) - 1)
    found = lut_codes[order][pos] == codes
    out = np.where(found, order[pos], IGNORE_INDEX).astype(np.int64)
    # pure black is a common "unlabelled" colour in RGB masks; anything else unknown is an error
    ignore_code = (IGNORE_COLOR[0] << 16) | (IGNORE_COLOR[1] << 8) | IGNORE_COLOR[2]
    unknown = ~found & (codes != 0) & (codes != ignore_code)
    if unknown.any():
        bad = sorted({tuple(int(v) for v in c) for c in rgb[unknown][:1000]})[:5]
        raise MaskError(
            f"{source}: RGB mask has colours {bad} that are not in the class palette "
            f"{dict(zip([*classes.names, classes.background_name], palette))}. "
            "Expected a P-mode palette PNG or an RGB mask using exactly these colours "
            f"(black or {IGNORE_COLOR} = ignore); fix the mask or pass the matching ClassSpec/layout."
        )
    return out


def load_mask(path: str | Path, classes: ClassSpec) -> np.ndarray:
    """Load a mask file as int64 (H, W) indices: 0..C-1 classes, C background, 255 ignore."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "P" or mode in ("L", "I", "I;16"):
                arr = np.asarray(im).astype(np.int64)
            else:
                arr = rgb_to_index(np.asarray(im.convert("RGB")), classes, source=str(path))
    except (OSError, SyntaxError, ValueError, EOFError) as exc:  # what Pillow raises for damaged files
        raise MaskError(f"{path}: cannot read the mask ({exc}); replace or remove the file") from exc
    bad = (arr > classes.background_index) & (arr != IGNORE_INDEX)
    if bad.any():
        vals = sorted(set(np.unique(arr[bad]).tolist()))[:8]
        raise MaskError(
            f"{path}: mask indices {vals} are out of range; expected 0..{classes.num_classes - 1} "
            f"for {list(classes.names)}, {classes.background_index} for background and "
            f"{IGNORE_INDEX} for ignore."
        )
    return arr


def labels_from_mask(mask: np.ndarray, num_classes: int, min_share: float = 0.0) -> np.ndarray:
    """Image-level multi-hot label (C,) float32 of the tissue classes in an index mask: every class with a pixel
    (``min_share`` 0), else those covering at least ``min_share`` of the patch (ignore pixels included in it);
    a patch where no class reaches it keeps every class with a pixel (it has tissue, just no dominant class)."""
    if not 0.0 <= min_share <= 1.0:
        raise MaskError(f"a label's minimum share of the patch must be within 0..1, got {min_share}")
    mask = np.asarray(mask)
    present = np.bincount(mask[mask < num_classes].ravel(), minlength=num_classes)[:num_classes]
    labels = (present > 0) & (present / max(mask.size, 1) >= min_share)  # = the tile baseline's share
    return (labels if labels.any() else present > 0).astype(np.float32)


def save_palette_mask(path: str | Path, mask: np.ndarray, classes: ClassSpec) -> None:
    """Write an index mask as a P-mode PNG whose palette holds the class colours (background at C)."""
    mask = np.asarray(mask)
    if mask.min() < 0 or ((mask > classes.background_index) & (mask != IGNORE_INDEX)).any():
        raise MaskError(f"mask values must be in 0..{classes.background_index} or {IGNORE_INDEX}")
    m8 = np.ascontiguousarray(mask.astype(np.uint8))
    im = Image.frombytes("P", (m8.shape[1], m8.shape[0]), m8.tobytes())
    flat = [v for c in classes.palette() for v in c]
    flat += [0, 0, 0] * (256 - len(classes.palette()))
    flat[3 * IGNORE_INDEX : 3 * IGNORE_INDEX + 3] = IGNORE_COLOR  # ignore pixels visible in any viewer
    im.putpalette(flat)
    im.save(path, format="PNG")
