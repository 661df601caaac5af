"""Shared setup for the inference benchmarks: a test slide mosaic and a realistic model."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

TILES = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tiles"


def mosaic(size: int, seed: int = 0) -> np.ndarray:
    """(size, size, 3) uint8 H&E-like image: real tissue tiles when available, else synthetic blocks."""
    rng = np.random.default_rng(seed)
    sources = []
    if TILES.is_dir():
        from PIL import Image

        for p in sorted(TILES.glob("tissue*.png")) + sorted(TILES.glob("*nuclei*.png")):
            sources.append(np.asarray(Image.open(p).convert("RGB")))
    out = np.empty((size, size, 3), np.uint8)
    for y in range(0, size, 512):
        for x in range(0, size, 512):
            if sources:
                tile = sources[rng.integers(len(sources))]
                tile = np.rot90(tile, rng.integers(4))
            else:
                tile = rng.integers(120, 230, (64, 64, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            h, w = min(512, size - y), min(512, size - x)
            out[y : y + h, x : x + w] = tile[:h, :w]
    return out


def make_slide(folder: Path, size: int, seed: int = 0, levels: int | None = None) -> Path:
    """A pyramidal JPEG TIFF of ``size`` x ``size`` px at 0.5 um/px (``levels=1``: a single-level TIFF)."""
    from protoseg.slide.writer import write_pyramidal_tiff

    path = Path(folder) / f"bench-{size}{'' if levels is None else f'-{levels}l'}.tif"
    write_pyramidal_tiff(path, mosaic(size, seed), mpp=0.5, tile_size=256, compression="jpeg", n_levels=levels)
    return path


def make_checkpoint(folder: Path, backbone: str = "resnet18", patch: int = 224) -> Path:
    """A random-init stage-2 SegNet checkpoint at 0.5 um/px (no weights downloaded)."""
    import torch

    from protoseg.classes import BCSS_WSSS
    from protoseg.models import build_model
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint

    cfg = {"kind": "segnet", "backbone": backbone, "num_classes": 4, "decoder_dim": 64, "weights": None}
    torch.manual_seed(0)
    model = build_model(cfg)
    path = Path(folder) / f"{backbone}.pt"
    save_checkpoint(Checkpoint(Stage.STAGE2, cfg, model.state_dict(), BCSS_WSSS, mpp=0.5, patch_size=patch), path)
    return path


def threads() -> int:
    return int(os.environ.get("PROTOSEG_BENCH_THREADS", os.cpu_count() or 1))
