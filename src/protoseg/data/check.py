"""Dataset check before training: every image opened and verified, masks read (values, palette, size),
patches counted per class, each bad file named. ``protoseg data check DIR`` prints the same report."""

from __future__ import annotations

import logging
import struct
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from protoseg.cancel import CancelLike, Progress, check_cancelled
from protoseg.classes import ClassSpec
from protoseg.data.datasets import PatchDataset, load_image, open_dataset
from protoseg.data.errors import DataError
from protoseg.data.layouts import detect_layout, split_dir
from protoseg.data.masks import labels_from_mask, load_mask
from protoseg.data.records import IMAGE_SUFFIXES, Layout, PatchRecord, Split
from protoseg.slide.pixels import SIXTEEN_BIT_MODES

logger = logging.getLogger(__name__)

#: Bad files listed in an error message (the full list is in the report).
SHOWN = 5
#: What Pillow raises for damaged, truncated or hostile image files.
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, Image.DecompressionBombError)
#: PIL modes with 8 bits per channel: their pixels load as they are. Images of other modes (16-bit grey,
#: 32-bit) are decoded by the check exactly as training loads them (``load_image``).
EIGHT_BIT_MODES = frozenset(
    {"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
)


class DatasetCheckError(DataError):
    """The dataset check found files training cannot use (each one is named in the report)."""


@dataclass(frozen=True)
class FileProblem:
    """One unusable file and why."""

    path: str
    problem: str

    def __str__(self) -> str:
        return f"{self.path}: {self.problem}"


@dataclass(frozen=True)
class SplitReport:
    """What one split holds: patch count, patches per class, image sizes, bad files and warnings."""

    split: Split
    patches: int
    per_class: tuple[tuple[str, int], ...]  # patches whose label contains the class
    sizes: tuple[tuple[tuple[int, int], int], ...]  # (width, height) -> patches, most common first
    problems: tuple[FileProblem, ...] = ()
    warnings: tuple[str, ...] = ()

    def lines(self) -> list[str]:
        sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes) or "-"
        counts = ", ".join(f"{name} {n}" for name, n in self.per_class)
        out = [f"{self.split.value}: {self.patches} patches; per class: {counts}; sizes: {sizes}"]
        out += [f"  warning: {w}" for w in self.warnings]
        out += [f"  BAD {p}" for p in self.problems]
        return out


@dataclass(frozen=True)
class DatasetReport:
    """The check of a dataset folder: layout, classes, one report per split found, and split-level problems."""

    root: str
    layout: Layout | None
    classes: tuple[str, ...]
    splits: tuple[SplitReport, ...]
    problems: tuple[FileProblem, ...] = ()  # a split that cannot be opened at all

    @property
    def all_problems(self) -> tuple[FileProblem, ...]:
        return self.problems + tuple(p for s in self.splits for p in s.problems)

    @property
    def ok(self) -> bool:
        return not self.all_problems

    def format(self) -> str:
        """The report as text: one block per split, each bad file on its own line, then a verdict."""
        layout = self.layout.value if self.layout is not None else "unknown"
        out = [f"dataset {self.root} (layout {layout}; classes {', '.join(self.classes) or '-'})"]
        out += [f"BAD {p}" for p in self.problems]
        for s in self.splits:
            out += s.lines()
        bad = len(self.all_problems)
        out.append("OK: ready to train" if not bad else f"FAILED: {bad} problem(s); fix or remove the files named")
        return "\n".join(out)

    def raise_if_bad(self) -> None:
        """DatasetCheckError naming the first bad files when the check failed."""
        bad = self.all_problems
        if bad:
            shown = "; ".join(str(p) for p in bad[:SHOWN])
            more = f" (+{len(bad) - SHOWN} more)" if len(bad) > SHOWN else ""
            raise DatasetCheckError(
                f"dataset check of {self.root} failed, {len(bad)} problem(s): {shown}{more}; fix or remove these "
                f"files (`protoseg data check {self.root}` lists them all)"
            )


def _image_size(path: Path) -> tuple[tuple[int, int], str]:
    """Width, height and PIL mode of an image file after checking it is complete (PNG: chunk CRCs; others:
    decoded); an image that is not 8-bit is also loaded as training loads it (DataError if it cannot be)."""
    with Image.open(path) as im:
        size, mode = im.size, im.mode
        if im.format == "PNG":
            im.verify()
        else:
            im.load()
    if mode not in EIGHT_BIT_MODES:
        load_image(path)  # 16-bit scaled to 8 bits, out-of-range 32-bit refused: the same call as training
    return size, mode


def _palette_differs(path: Path, classes: ClassSpec) -> bool:
    """Whether a P-mode mask's palette gives class indices other colours than the ClassSpec (a hint that
    the masks follow another class order)."""
    with Image.open(path) as im:
        pal = im.getpalette() if im.mode == "P" else None
    if not pal:
        return False
    want = [c for rgb in classes.palette() for c in rgb]
    return pal[: len(want)] != want


def _check_record(
    rec: PatchRecord, classes: ClassSpec, problems: list[FileProblem], notes: dict[str, list[str]]
) -> tuple[tuple[int, int] | None, np.ndarray | None]:
    """Size and image-level label of one patch; problems are appended instead of raised, oddities noted
    by kind (``palette_off``, ``sixteen_bit``)."""
    try:
        size, mode = _image_size(rec.image)
    except DataError as exc:
        problems.append(FileProblem(str(rec.image), str(exc).removeprefix(f"{rec.image}: ")))
        return None, None
    except UNREADABLE as exc:
        problems.append(FileProblem(str(rec.image), f"unreadable image ({type(exc).__name__}: {exc})"))
        return None, None
    if mode in SIXTEEN_BIT_MODES:
        notes["sixteen_bit"].append(str(rec.image))
    label = np.asarray(rec.label, dtype=np.float32) if rec.label is not None else None
    if rec.mask is not None:
        try:
            mask = load_mask(rec.mask, classes)
        except DataError as exc:
            problems.append(FileProblem(str(rec.mask), str(exc).removeprefix(f"{rec.mask}: ")))
            return size, label
        except UNREADABLE as exc:
            problems.append(FileProblem(str(rec.mask), f"unreadable mask ({type(exc).__name__}: {exc})"))
            return size, label
        if (mask.shape[1], mask.shape[0]) != size:
            problems.append(
                FileProblem(
                    str(rec.mask), f"mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[0]}x{size[1]}"
                )
            )
        if _palette_differs(rec.mask, classes):
            notes["palette_off"].append(str(rec.mask))
        if label is None:
            label = labels_from_mask(mask, classes.num_classes)
    return size, label


def _mask_warnings(ds: PatchDataset) -> list[str]:
    """What a val/test split without masks (or with some missing) means: validation scores no masks, evaluation
    refuses it; the same rule ``protoseg.train.evaluation.masked_split`` applies."""
    split, total = ds.split or Split.TRAIN, len(ds.records)
    missing = total - len(ds.masked())
    if split is Split.TRAIN or not missing:
        return []
    use = (
        "validation scores no masks (stage 1 chooses best.pt by its class gate against the image labels, "
        "stage 2 keeps the last epoch)"
        if split is Split.VAL
        else "`protoseg evaluate` cannot score it"
    )
    if missing == total:
        return [f"no masks: the {split.value} split has image-level labels only, so {use} (add a mask per patch)"]
    return [f"{missing} of {total} {split.value} patch(es) have no mask; the metrics leave them out"]


def check_split(ds: PatchDataset, cancel: CancelLike | None = None, progress: Progress | None = None) -> SplitReport:
    """Open every image and mask of one split; bad files become ``problems``, oddities ``warnings``."""
    classes, split = ds.classes, ds.split or Split.TRAIN
    problems: list[FileProblem] = []
    notes: dict[str, list[str]] = {"palette_off": [], "sixteen_bit": []}
    sizes: Counter[tuple[int, int]] = Counter()
    by_size: dict[tuple[int, int], list[str]] = {}
    counts = np.zeros(classes.num_classes, np.int64)
    unlabelled = 0
    for i, rec in enumerate(ds.records):
        check_cancelled(cancel, "the dataset check")
        size, label = _check_record(rec, classes, problems, notes)
        if size is not None:
            sizes[size] += 1
            by_size.setdefault(size, []).append(str(rec.image))
        if label is not None:
            counts += label.astype(bool)
            unlabelled += int(not label.any())
        if progress is not None:
            progress(i + 1, len(ds.records))
    if len(sizes) > 1:  # a batch needs one size: name the patches that differ from the common one
        common = sizes.most_common(1)[0][0]
        for size, paths in by_size.items():
            if size != common:
                problems += [
                    FileProblem(p, f"is {size[0]}x{size[1]} but most patches are {common[0]}x{common[1]}")
                    for p in paths
                ]
    warnings = []
    if notes["palette_off"]:
        warnings.append(
            f"{len(notes['palette_off'])} mask palette(s) differ from the class colours {classes.palette()} "
            f"(e.g. {notes['palette_off'][0]}); check the masks use this class order"
        )
    if notes["sixteen_bit"]:
        warnings.append(
            f"{len(notes['sixteen_bit'])} 16-bit grey image(s) (e.g. {notes['sixteen_bit'][0]}) are scaled to "
            "8 bits for training"
        )
    warnings += _mask_warnings(ds)
    if any(w != h for w, h in sizes):
        warnings.append("non-square patches: 90-degree rotation augmentation changes their shape")
    missing = [n for n, c in zip(classes.names, counts) if c == 0]
    if ds.records and missing:
        warnings.append(f"no {split.value} patch contains {missing}")
    if unlabelled:
        warnings.append(f"{unlabelled} patch(es) contain no tissue class (all-zero label)")
    return SplitReport(
        split=split,
        patches=len(ds.records),
        per_class=tuple((n, int(c)) for n, c in zip(classes.names, counts)),
        sizes=tuple(sizes.most_common()),
        problems=tuple(problems),
        warnings=tuple(warnings),
    )


def check_dataset(
    root: str | Path,
    layout: Layout | str | None = None,
    splits: Sequence[Split] = tuple(Split),
    cancel: CancelLike | None = None,
    progress: Progress | None = None,
) -> DatasetReport:
    """Check every split of a dataset folder; the train split must exist, val/test are optional."""
    root = Path(root)
    problems: list[FileProblem] = []
    reports: list[SplitReport] = []
    classes: tuple[str, ...] = ()
    try:
        found_layout: Layout | None = Layout(layout) if layout is not None else detect_layout(root)
    except (DataError, OSError, ValueError) as exc:
        return DatasetReport(str(root), None, (), (), (FileProblem(str(root), str(exc)),))
    layout = found_layout
    for split in splits:
        try:
            ds = open_dataset(root, split, layout)
        except (DataError, OSError, ValueError) as exc:
            folder = split_dir(root, split) if root.is_dir() else None
            has_images = folder is not None and any(f.suffix.lower() in IMAGE_SUFFIXES for f in folder.rglob("*"))
            if split is Split.TRAIN or has_images:
                problems.append(FileProblem(str(root), f"{split.value} split cannot be used: {exc}"))
            else:
                logger.info("no %s split in %s (%s)", split.value, root, exc)
            continue
        found_layout, classes = ds.layout, ds.classes.names
        reports.append(check_split(ds, cancel, progress))
    return DatasetReport(str(root), found_layout, classes, tuple(reports), tuple(problems))


__all__ = ["DatasetCheckError", "DatasetReport", "FileProblem", "SplitReport", "check_dataset", "check_split"]
