"""Tiny timm and open_clip models written the way users get them, for offline encoder tests (no downloads):
into a fake Hugging Face cache (``models--org--repo/refs/main`` + ``snapshots/<rev>/``) and into plain folders
as ``hf download org/repo --local-dir DIR`` writes them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

TIMM_REPO, CLIP_REPO, MISSING_REPO = "protoseg-test/tiny-timm", "protoseg-test/tiny-clip", "protoseg-test/absent"
TINY_CLIP = {  # a tiny open_clip architecture, unknown to open_clip by name: the folder's config is all it has
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CLIP_MEAN, CLIP_STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
REVISION = "0123456789abcdef0123456789abcdef01234567"
#: Config overrides of a tiny CPU run: CAM stage 1 and stage 2 on a random-init ResNet-18, no loader workers.
TINY_CPU_RUN = (
    "data.num_workers=0",
    "model.backbone=resnet18",
    "model.weights=null",
    "stage2.backbone=resnet18",
    "stage2.weights=null",
    "stage1.recipe=cam",
    "stage1.warm_start=none",  # minutes of self-supervised steps before stage 1 (tests/test_warm_start.py)
    "run.device=cpu",
)


def hub_snapshot(cache: Path, repo: str) -> Path:
    """An empty snapshot folder of ``repo`` in the Hugging Face cache layout (``refs/main`` names it)."""
    root = cache / ("models--" + repo.replace("/", "--"))
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(REVISION)
    snapshot = root / "snapshots" / REVISION
    snapshot.mkdir(parents=True)
    return snapshot


def seeded(fn: Callable[[], Any], seed: int) -> Any:
    """``fn()`` under a fixed torch seed, leaving the caller's generator alone."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def write_tiny_models(root: Path) -> dict[str, Any]:
    """Write a tiny timm model (``test_resnet``, seed 11) and a tiny open_clip model (seed 12), each into
    ``root/hf-cache`` under TIMM_REPO / CLIP_REPO and into ``root/tiny-timm`` / ``root/tiny-clip``."""
    import open_clip
    import timm
    from timm.models import save_for_hf

    cache = root / "hf-cache"
    tnet = seeded(lambda: timm.create_model("test_resnet", num_classes=0).eval(), 11)
    clip = seeded(lambda: open_clip.CLIP(**TINY_CLIP).eval(), 12)
    clip_cfg = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": list(CLIP_MEAN), "std": list(CLIP_STD)}}
    for folder in (hub_snapshot(cache, TIMM_REPO), root / "tiny-timm"):
        folder.mkdir(exist_ok=True)
        save_for_hf(tnet, folder)
    for folder in (hub_snapshot(cache, CLIP_REPO), root / "tiny-clip"):
        folder.mkdir(exist_ok=True)
        (folder / "open_clip_config.json").write_text(json.dumps(clip_cfg))
        torch.save(clip.state_dict(), folder / "open_clip_pytorch_model.bin")
    return {"cache": cache, "root": root, "timm": tnet, "clip": clip}


def use_offline_cache(monkeypatch: Any, cache: Path) -> None:
    """HF_HUB_OFFLINE=1 and huggingface_hub's cache pointed at ``cache`` (as HF_HUB_CACHE would at start-up)."""
    from huggingface_hub import constants

    monkeypatch.delenv("PROTOSEG_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
