"""Stage-1 → stage-2 hand-over: export pseudo-masks (palette PNG + confidence) and read them back."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from protoseg.config import ProtosegConfig
from protoseg.data.augment import ColorJitter, Compose, HEDJitter, RandomFlip, RandomRot90
from protoseg.data.masks import save_palette_mask
from protoseg.errors import ProtosegError
from protoseg.models.checkpoint import Checkpoint, Stage
from protoseg.models.classnet import ClassNet
from protoseg.runtime import select_device
from protoseg.train.evaluation import pseudo_masks

logger = logging.getLogger(__name__)

MANIFEST = "pseudo.json"


class PseudoMaskError(ProtosegError):
    """Pseudo-mask folder missing, incomplete or not matching the training images."""


def export_pseudo_masks(
    ckpt: Checkpoint,
    dataset: Dataset,
    out_dir: str | Path,
    cfg: ProtosegConfig,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Label-gated CAM pseudo-masks for every training patch: ``mask/<name>.png`` (palette, background = C)
    and ``conf/<name>.png`` (max CAM × 255); existing outputs are skipped so an interrupted export resumes."""
    if ckpt.stage is not Stage.STAGE1:
        raise PseudoMaskError("pseudo-masks come from a stage-1 checkpoint; this one is stage 2")
    out = Path(out_dir)
    (out / "mask").mkdir(parents=True, exist_ok=True)
    (out / "conf").mkdir(parents=True, exist_ok=True)
    dev = select_device(device)
    net = ckpt.build_model().to(dev)
    assert isinstance(net, ClassNet)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=cfg.data.num_workers)
    total, done = len(dataset), 0  # type: ignore[arg-type]
    with torch.no_grad():
        for batch in loader:
            names = list(batch["name"])
            todo = [i for i, n in enumerate(names) if not (out / "conf" / f"{n}.png").is_file()]
            if todo:
                x = batch["image"][todo].to(dev)
                y = batch["label"][todo].to(dev)
                pred, conf = pseudo_masks(net, x, y, cfg)
                for j, i in enumerate(todo):
                    mask = pred[j].cpu().numpy().astype(np.uint8)
                    save_palette_mask(out / "mask" / f"{names[i]}.png", mask, ckpt.classes)
                    c8 = (conf[j].clamp(0, 1) * 255).round().byte().cpu().numpy()
                    tmp = out / "conf" / f".{names[i]}.tmp.png"
                    Image.fromarray(c8, mode="L").save(tmp)
                    tmp.replace(out / "conf" / f"{names[i]}.png")  # conf written last marks the patch done
            done += len(names)
            if progress:
                progress(done, total)
    manifest = {
        "classes": ckpt.classes.to_dict(),
        "count": total,
        "checkpoint_epoch": ckpt.epoch,
        "recipe": ckpt.extra.get("recipe"),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2))
    logger.info("wrote %d pseudo-masks to %s", total, out)
    return out


class PseudoMaskDataset(Dataset):
    """Training patches paired with their exported pseudo-mask and confidence (stage-2 input)."""

    def __init__(self, images: Dataset, pseudo_dir: str | Path, augment: bool = True, seed: int = 0) -> None:
        self.images = images
        self.dir = Path(pseudo_dir)
        if not (self.dir / MANIFEST).is_file():
            raise PseudoMaskError(
                f"{self.dir} has no {MANIFEST}; export pseudo-masks first with `protoseg pseudo --checkpoint "
                "stage1/best.pt --out DIR`"
            )
        self.geometric = Compose([RandomFlip(), RandomRot90()], seed=seed) if augment else None
        self.colour = Compose([ColorJitter(), HEDJitter()], seed=seed + 1) if augment else None

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.images[index]
        name = sample["name"]
        mask_path, conf_path = self.dir / "mask" / f"{name}.png", self.dir / "conf" / f"{name}.png"
        if not conf_path.is_file() or not mask_path.is_file():
            raise PseudoMaskError(f"no pseudo-mask for {name} in {self.dir}; re-run `protoseg pseudo` (it resumes)")
        mask = torch.from_numpy(np.asarray(Image.open(mask_path)).astype(np.int64))
        conf = torch.from_numpy(np.asarray(Image.open(conf_path), dtype=np.float32) / 255.0)
        image = sample["image"]
        if self.geometric is not None and self.colour is not None:
            stacked = self.geometric({"image": torch.cat([image, conf[None]]), "mask": mask})
            image, conf, mask = stacked["image"][:3], stacked["image"][3], stacked["mask"]
            image = self.colour({"image": image})["image"]
        return {"image": image, "mask": mask, "confidence": conf, "label": sample["label"], "name": name}
