"""Stage-1 → stage-2 hand-over: export pseudo-masks (palette PNG + confidence) and read them back.

A pseudo-mask folder is a ``protoseg.outputs`` folder of kind ``pseudo-masks``: it is written whole
into a temporary sibling and swapped in, and its marker records the stage-1 weights (SHA-256), the
pseudo-mask rules and the sample keys, so masks of another checkpoint are never mixed in and stage 2
refuses masks made for other patches. Mask pixels: classes 0..C-1, background C, ignore 255 (grey).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Subset

from protoseg.config import ProtosegConfig, to_dict
from protoseg.data.augment import ColorJitter, Compose, HEDJitter, RandomFlip, RandomRot90, apply_transform
from protoseg.data.masks import save_palette_mask
from protoseg.errors import ProtosegError
from protoseg.models.checkpoint import Checkpoint, Stage
from protoseg.models.classnet import ClassNet
from protoseg.outputs import read_marker, replace_dir
from protoseg.runtime import resolve_num_workers, select_device
from protoseg.train.evaluation import pseudo_masks

logger = logging.getLogger(__name__)

MANIFEST = "pseudo.json"
#: ``protoseg.outputs`` kind of a pseudo-mask folder.
KIND = "pseudo-masks"


class PseudoMaskError(ProtosegError):
    """Pseudo-mask folder missing, incomplete or not matching the training images."""


def _records(dataset: Dataset) -> list[Any] | None:
    """The dataset's ``PatchRecord`` list in sample order (through Subsets), or None."""
    if isinstance(dataset, Subset):
        inner = _records(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    records = getattr(dataset, "records", None)
    return list(records) if records is not None else None


def dataset_scale(dataset: Dataset) -> float:
    """The ``data.scale`` a patch folder's samples are resampled by (through Subsets; 1 for other datasets)."""
    if isinstance(dataset, Subset):
        return dataset_scale(dataset.dataset)
    return float(getattr(dataset, "scale", 1.0))


def _patches(dataset: Dataset) -> list[Any] | None:
    """A region dataset's ``RegionPatch`` list (slide path + box) in sample order, or None."""
    if isinstance(dataset, Subset):
        inner = _patches(dataset.dataset)
        return None if inner is None else [inner[i] for i in dataset.indices]
    patches = getattr(dataset, "patches", None)
    if patches is None or not all(hasattr(p, "slide_path") and hasattr(p, "box") for p in patches):
        return None
    return list(patches)


def _safe(name: str) -> str:
    return name.replace("/", "__").replace("\\", "__").replace(os.sep, "__")


def sample_keys(dataset: Dataset, names: Sequence[str] | None = None) -> list[str]:
    """One file name per sample, unique: the sample name, or where two samples share a name (e.g. the
    same file name in two sub-folders of a CSV dataset) the image path relative to the common folder."""
    records = _records(dataset)
    patches = _patches(dataset) if records is None else None
    if patches is not None:  # slide regions: the slide and the box name the patch (no pixel reads)
        keys = [_safe(f"{Path(p.slide_path).stem}_x{p.box[0]}_y{p.box[1]}") for p in patches]
        if len(set(keys)) < len(keys):  # same slide name in two folders
            keys = [_safe(f"{Path(p.slide_path).parent.name}/{k}") for p, k in zip(patches, keys)]
    elif records is None:
        names = list(names) if names is not None else [dataset[i]["name"] for i in range(len(dataset))]  # type: ignore[arg-type]
        keys = [_safe(n) for n in names]
    else:
        keys = [_safe(r.name) for r in records]
        dup = {k for k in keys if keys.count(k) > 1} if len(set(keys)) < len(keys) else set()
        if dup:
            paths = [Path(r.image).resolve() for r in records]
            base = Path(os.path.commonpath([str(p.parent) for p in paths]))
            keys = [_safe(str(p.relative_to(base).with_suffix(""))) if k in dup else k for k, p in zip(keys, paths)]
            if len(set(keys)) < len(keys):  # a.png and a.jpg in one folder
                keys = [_safe(str(p.relative_to(base))) if k in dup else k for k, p in zip(keys, paths)]
    if len(set(keys)) < len(keys):
        twice = sorted({k for k in keys if keys.count(k) > 1})[:3]
        raise PseudoMaskError(f"training samples share the names {twice}; give each patch a unique name")
    return keys


def _keys_digest(keys: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(keys).encode()).hexdigest()


def _weights_digest(net: torch.nn.Module) -> str:
    from protoseg.infer.identity import model_sha256

    return model_sha256(net)


def _up_to_date(out: Path, wanted: dict[str, Any], keys: Sequence[str]) -> bool:
    marker = read_marker(out)
    if marker is None or marker.get("kind") != KIND:
        return False
    if any(marker.get(k) != v for k, v in wanted.items()):
        return False
    return all((out / "mask" / f"{k}.png").is_file() and (out / "conf" / f"{k}.png").is_file() for k in keys)


def export_pseudo_masks(
    ckpt: Checkpoint,
    dataset: Dataset,
    out_dir: str | Path,
    cfg: ProtosegConfig,
    device: str = "auto",
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Path:
    """Pseudo-masks of every training patch (``evaluation.pseudo_masks``, label-gated):
    ``mask/<key>.png`` (palette: classes, background C, ignore 255 grey) and ``conf/<key>.png``
    (label confidence × 255). The folder is written fresh and swapped in; when it already holds the
    masks of the same weights, rules and samples nothing is redone. A folder holding anything protoseg did
    not write is refused, ``overwrite`` or not (which only lets it replace another kind of protoseg output)."""
    if ckpt.stage is not Stage.STAGE1:
        raise PseudoMaskError("pseudo-masks come from a stage-1 checkpoint; this one is stage 2")
    if dataset_scale(dataset) != ckpt.data_scale:
        raise PseudoMaskError(
            f"the checkpoint was trained on patches resampled by {ckpt.data_scale:g} (data.scale) but these are "
            f"resampled by {dataset_scale(dataset):g}; export with --set data.scale={ckpt.data_scale:g}"
        )
    out = Path(out_dir)
    dev = select_device(device)
    net = ckpt.build_model().to(dev)
    assert isinstance(net, ClassNet)
    net.eval()
    keys = sample_keys(dataset)
    wanted = {
        "checkpoint_sha256": _weights_digest(net),
        "rules": to_dict(cfg.stage1.pseudo),
        "samples_sha256": _keys_digest(keys),
        "count": len(keys),
        "scale": dataset_scale(dataset),  # masks are at the resampled patch size (folders before the setting: 1)
    }
    if _up_to_date(out, wanted, keys):
        logger.info("pseudo-masks in %s are up to date (same weights, rules and samples)", out)
        if progress:
            progress(len(keys), len(keys))
        return out
    workers = resolve_num_workers(cfg.data.num_workers, dev.type)
    loader = DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=False, num_workers=workers)
    total, done = len(keys), 0
    ignored = 0
    with replace_dir(out, KIND, overwrite=overwrite, **wanted) as tmp:
        (tmp / "mask").mkdir()
        (tmp / "conf").mkdir()
        with torch.no_grad():
            for batch in loader:
                x, y = batch["image"].to(dev), batch["label"].to(dev)
                pred, conf = pseudo_masks(net, x, y, cfg)
                for j in range(len(x)):
                    key = keys[done + j]
                    mask = pred[j].cpu().numpy().astype(np.uint8)
                    ignored += int((mask == 255).sum())
                    save_palette_mask(tmp / "mask" / f"{key}.png", mask, ckpt.classes)
                    c8 = (conf[j].clamp(0, 1) * 255).round().byte().cpu().numpy()
                    Image.fromarray(c8, mode="L").save(tmp / "conf" / f"{key}.png")
                done += len(x)
                if progress:
                    progress(done, total)
        manifest = {
            "classes": ckpt.classes.to_dict(),
            "count": total,
            "checkpoint_epoch": ckpt.epoch,
            "checkpoint_sha256": wanted["checkpoint_sha256"],
            "recipe": ckpt.extra.get("recipe"),
            "rules": wanted["rules"],
            "keys": keys,
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    logger.info("wrote %d pseudo-masks to %s (%d ignore pixels)", total, out, ignored)
    return out


class PseudoMaskDataset(Dataset):
    """Training patches paired with their exported pseudo-mask and confidence (stage-2 input). With ``augment``
    flips/rot90 move image, mask and confidence together, then colour jitter and (``stain``) HED stain jitter
    touch the image; ``stain=False`` leaves the stain jitter to the trainer (batched on the device)."""

    def __init__(
        self, images: Dataset, pseudo_dir: str | Path, augment: bool = True, seed: int = 0, stain: bool = True
    ) -> None:
        self.images = images
        self.dir = Path(pseudo_dir)
        marker = read_marker(self.dir)
        if marker is None or marker.get("kind") != KIND or not (self.dir / MANIFEST).is_file():
            raise PseudoMaskError(
                f"{self.dir} is not a complete protoseg pseudo-mask folder (or was written by an older version); "
                "export pseudo-masks with `protoseg pseudo --checkpoint stage1/best.pt --out DIR`"
            )
        self.keys = sample_keys(images)
        made_at, now = float(marker.get("scale", 1.0)), dataset_scale(images)
        if made_at != now:
            raise PseudoMaskError(
                f"the pseudo-masks in {self.dir} were made with the patches resampled by {made_at:g} (data.scale) "
                f"but stage 2 reads them at {now:g}; train stage 2 with --set data.scale={made_at:g} (as stage 1), "
                "or re-export the pseudo-masks"
            )
        if marker.get("samples_sha256") != _keys_digest(self.keys):
            raise PseudoMaskError(
                f"the pseudo-masks in {self.dir} were made for other training patches ({marker.get('count')} "
                f"samples, this dataset has {len(self.keys)}); re-export them with `protoseg pseudo`"
            )
        self.geometric = Compose([RandomFlip(), RandomRot90()], seed=seed) if augment else None
        stains = [HEDJitter()] if stain else []
        self.colour = Compose([ColorJitter(), *stains], seed=seed + 1) if augment else None

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, key: int) -> dict[str, Any]:
        """The sample at ``key`` (an index, or a ``SampleKey`` whose seed picks the augmentation draw)."""
        index = int(key)
        sample = self.images[index]  # the training patch itself, un-augmented
        name = self.keys[index]
        mask_path, conf_path = self.dir / "mask" / f"{name}.png", self.dir / "conf" / f"{name}.png"
        if not conf_path.is_file() or not mask_path.is_file():
            raise PseudoMaskError(f"no pseudo-mask for {name} in {self.dir}; re-export with `protoseg pseudo`")
        mask = torch.from_numpy(np.asarray(Image.open(mask_path)).astype(np.int64))
        conf = torch.from_numpy(np.asarray(Image.open(conf_path), dtype=np.float32) / 255.0)
        image = sample["image"]
        if self.geometric is not None and self.colour is not None:
            stacked = apply_transform(self.geometric, {"image": torch.cat([image, conf[None]]), "mask": mask}, key)
            image, conf, mask = stacked["image"][:3], stacked["image"][3], stacked["mask"]
            image = apply_transform(self.colour, {"image": image}, key)["image"]
        return {"image": image, "mask": mask, "confidence": conf, "label": sample["label"], "name": sample["name"]}
