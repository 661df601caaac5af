"""Parse BCSS-WSSS and LUAD-HistoSeg folder layouts (labels in file names) and detect a layout."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.classes import BCSS_WSSS, LUAD_HISTOSEG, ClassSpec
from protoseg.data.errors import DatasetLayoutError
from protoseg.data.records import Layout, PatchRecord, Split, describe_folder, list_images

logger = logging.getLogger(__name__)

_BCSS_LABEL = re.compile(r"\[([01]{2,})\]")
_LUAD_LABEL = re.compile(r"\[([01](?:[\s,]+[01])+)\]")
_MPP = re.compile(r"MPP-([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)
_GENERIC_FILES = ("classes.yaml", "classes.yml", "classes.json", "labels.csv")

EXAMPLES = {
    Layout.BCSS_WSSS: "train/TCGA-A1-A0SK-DX1_xmin45749_ymin25055_MPP-0.2500+0[1101].png, "
    "val/img/<name>.png + val/mask/<name>.png (P-mode palette), test/img + test/mask",
    Layout.LUAD_HISTOSEG: "train/1031280-2300-27920-[1 0 0 1].png, val/img/<name>.png + "
    "val/mask/<name>.png, test/img + test/mask",
    Layout.GENERIC: "classes.yaml (names + colours) and labels.csv (path,TUM,STR,... multi-hot "
    "or path,tags with ';'-separated names), or one subfolder per class (<root>/TUM/*.png)",
}

SPECS = {Layout.BCSS_WSSS: BCSS_WSSS, Layout.LUAD_HISTOSEG: LUAD_HISTOSEG}


def parse_label(name: str, layout: Layout, num_classes: int) -> tuple[int, ...] | None:
    """Multi-hot label from a file name (last ``[...]`` group), or None when there is none."""
    pattern = _BCSS_LABEL if layout == Layout.BCSS_WSSS else _LUAD_LABEL
    found = pattern.findall(Path(name).stem)
    if not found:
        return None
    bits = tuple(int(b) for b in re.findall(r"[01]", found[-1]))
    return bits if len(bits) == num_classes else None


def parse_mpp(name: str) -> float | None:
    """Microns per pixel encoded in a BCSS-style name (``MPP-0.2500``), else None."""
    m = _MPP.search(name)
    return float(m.group(1)) if m else None


def split_dir(root: Path, split: Split) -> Path | None:
    """Folder of a split (``val`` also accepts ``valid``/``validation``), or None if missing."""
    names = {Split.VAL: ("val", "valid", "validation")}.get(split, (split.value,))
    for n in names:
        if (root / n).is_dir():
            return root / n
    return None


def _label_style(root: Path) -> Layout | None:
    """Guess BCSS vs LUAD from the label syntax of the first train file names."""
    for p in list_images(root / "train")[:50]:
        if _LUAD_LABEL.search(p.stem):
            return Layout.LUAD_HISTOSEG
        if _BCSS_LABEL.search(p.stem):
            return Layout.BCSS_WSSS
    return None


def _palette_style(root: Path) -> Layout | None:
    """Guess BCSS vs LUAD from the colours of a val/test mask's palette."""
    for split in (Split.VAL, Split.TEST):
        d = split_dir(root, split)
        masks = list_images(d / "mask") if d else []
        if not masks:
            continue
        with Image.open(masks[0]) as im:
            pal = im.getpalette() if im.mode == "P" else None
            colours = (
                {tuple(pal[i : i + 3]) for i in range(0, 15, 3)}
                if pal
                else {tuple(c) for c in np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)}
            )
        scores = {
            layout: len((set(spec.colors) - set(SPECS[_other(layout)].colors)) & colours)
            for layout, spec in SPECS.items()
        }
        best = max(scores, key=scores.get)
        return best if scores[best] > 0 else None
    return None


def _other(layout: Layout) -> Layout:
    return Layout.LUAD_HISTOSEG if layout == Layout.BCSS_WSSS else Layout.BCSS_WSSS


def _is_generic(root: Path) -> bool:
    for base in (root, root / "train"):
        if any((base / f).is_file() for f in _GENERIC_FILES):
            return True
    base = root / "train" if (root / "train").is_dir() else root
    subdirs = [p for p in base.iterdir() if p.is_dir() and p.name not in ("train", "val", "valid", "test")]
    return bool(subdirs) and not list_images(base) and all(list_images(p) for p in subdirs)


def detect_layout(root: str | Path) -> Layout:
    """Detect the layout of a dataset folder from its files; raises DatasetLayoutError if none fits."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset folder {root} does not exist or is not a folder")
    if _is_generic(root):
        return Layout.GENERIC
    layout = _label_style(root) or _palette_style(root)
    if layout is None:
        expected = "; ".join(f"{k.value}: {v}" for k, v in EXAMPLES.items())
        raise DatasetLayoutError(
            f"cannot detect the dataset layout of {root}. Expected one of — {expected}. "
            f"Found: {describe_folder(root)}; {describe_folder(root / 'train')}."
        )
    logger.info("detected %s layout in %s", layout.value, root)
    return layout


def _mask_pairs(d: Path, layout: Layout) -> list[PatchRecord]:
    imgs, masks = list_images(d / "img"), list_images(d / "mask")
    if not imgs:
        raise DatasetLayoutError(
            f"{layout.value} layout expects images in {d / 'img'} and masks with the same names in "
            f"{d / 'mask'} (e.g. {EXAMPLES[layout]}); found: {describe_folder(d)}"
        )
    by_stem = {m.stem: m for m in masks}
    missing = [p.name for p in imgs if p.stem not in by_stem]
    if missing:
        raise DatasetLayoutError(
            f"{len(missing)} of {len(imgs)} images in {d / 'img'} have no mask of the same name in "
            f"{d / 'mask'}, e.g. {missing[:3]}; masks found: {[m.name for m in masks[:3]]}. "
            "Each img/<name>.png needs mask/<name>.png."
        )
    return [PatchRecord(image=p, name=p.stem, mask=by_stem[p.stem], mpp=parse_mpp(p.name)) for p in imgs]


def named_records(root: Path, split: Split, layout: Layout) -> tuple[ClassSpec, list[PatchRecord]]:
    """Records of one split of a BCSS-WSSS or LUAD-HistoSeg dataset."""
    spec = SPECS[layout]
    d = split_dir(root, split)
    if d is None:
        raise DatasetLayoutError(
            f"{layout.value} layout expects a '{split.value}/' folder in {root} "
            f"(e.g. {EXAMPLES[layout]}); found: {describe_folder(root)}"
        )
    if split != Split.TRAIN:
        return spec, _mask_pairs(d, layout)
    records, unparsable = [], []
    for p in list_images(d):
        label = parse_label(p.name, layout, spec.num_classes)
        if label is None:
            unparsable.append(p.name)
        else:
            records.append(PatchRecord(image=p, name=p.stem, label=label, mpp=parse_mpp(p.name)))
    if unparsable:
        logger.warning("%d files in %s have no parsable label, skipped (e.g. %s)", len(unparsable), d, unparsable[:3])
    if not records:
        raise DatasetLayoutError(
            f"no training image in {d} has a {spec.num_classes}-class label in its name as the "
            f"{layout.value} layout expects (e.g. {EXAMPLES[layout]}); found names like "
            f"{unparsable[:3] or 'no images'}."
        )
    return spec, records
