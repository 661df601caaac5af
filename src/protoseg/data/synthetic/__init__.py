"""Synthetic H&E-like tissue with exact ground truth (TUM, STR, LYM, NEC + glass background).

Deterministic (seeded numpy) and vectorised; used for end-to-end checks without downloads and
for the plugin's sample data.
"""

from protoseg.data.synthetic.layout import random_layout
from protoseg.data.synthetic.render import NUM_CLASSES, render_tissue
from protoseg.data.synthetic.stains import Stain
from protoseg.data.synthetic.writers import (
    SAMPLE_SLIDE,
    SyntheticSlide,
    SyntheticSlideSpec,
    mask_path_for,
    synthetic_patch,
    write_bcss_dataset,
    write_synthetic_slide,
)

__all__ = [
    "NUM_CLASSES",
    "SAMPLE_SLIDE",
    "Stain",
    "SyntheticSlide",
    "SyntheticSlideSpec",
    "mask_path_for",
    "random_layout",
    "render_tissue",
    "synthetic_patch",
    "write_bcss_dataset",
    "write_synthetic_slide",
]
