"""Generic patch-dataset layout: classes file + labels.csv (multi-hot or tags), or class subfolders."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

from protoseg.classes import ClassSpec
from protoseg.data.errors import DatasetLayoutError
from protoseg.data.layouts import EXAMPLES, split_dir
from protoseg.data.records import Layout, PatchRecord, Split, describe_folder, list_images

logger = logging.getLogger(__name__)

_PATH_COLUMNS = ("path", "image", "filename", "file")


def _find(bases: list[Path], names: tuple[str, ...]) -> Path | None:
    for base in bases:
        for n in names:
            if (base / n).is_file():
                return base / n
    return None


def load_classes_file(path: Path) -> ClassSpec:
    """ClassSpec from classes.yaml/.json: {names, colors}, a list of {name, color}, or {name: colour}."""
    text = path.read_text()
    if path.suffix == ".json":
        data = json.loads(text)
    else:
        import yaml

        data = yaml.safe_load(text)
    try:
        if isinstance(data, dict) and "names" in data:
            return ClassSpec.from_dict(data)
        if isinstance(data, dict) and "classes" in data:
            data = data["classes"]
        if isinstance(data, dict):
            return ClassSpec(names=tuple(str(k) for k in data), colors=tuple(tuple(v) for v in data.values()))
        if isinstance(data, list) and all(isinstance(d, dict) for d in data):
            names = tuple(str(d["name"]) for d in data)
            colors = tuple(tuple(d["color"]) for d in data) if all("color" in d for d in data) else ()
            return ClassSpec(names=names, colors=colors)
        if isinstance(data, list):
            return ClassSpec(names=tuple(str(d) for d in data))
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetLayoutError(f"{path}: cannot read classes ({exc})") from exc
    raise DatasetLayoutError(
        f"{path}: expected 'names: [TUM, STR]' with optional 'colors: [[255,0,0], ...]', a list of "
        f"{{name, color}} entries or a mapping name -> colour; found {type(data).__name__}"
    )


def _csv_records(csv_path: Path, split: Split, filter_split: bool, spec: ClassSpec | None):
    with csv_path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise DatasetLayoutError(f"{csv_path} has no rows; expected e.g. 'path,TUM,STR' then 'a.png,1,0'")
    cols = list(rows[0].keys())
    path_col = next((c for c in cols if c.strip().lower() in _PATH_COLUMNS), None)
    if path_col is None:
        raise DatasetLayoutError(f"{csv_path}: needs a 'path' column (found columns {cols})")
    if filter_split and "split" in cols:
        wanted = {split.value, "valid"} if split == Split.VAL else {split.value}
        rows = [r for r in rows if r["split"].strip().lower() in wanted]
    meta = {path_col, "split", "mask", "tags"}
    if "tags" in cols:
        tags = [[t.strip() for t in r["tags"].replace(",", ";").split(";") if t.strip()] for r in rows]
        if spec is None:
            spec = ClassSpec(names=tuple(sorted({t for ts in tags for t in ts})))
        unknown = sorted({t for ts in tags for t in ts} - set(spec.names))
        if unknown:
            raise DatasetLayoutError(f"{csv_path}: tags {unknown} are not classes {list(spec.names)}")
        labels = [tuple(int(n in ts) for n in spec.names) for ts in tags]
    else:
        class_cols = [c for c in cols if c not in meta]
        if spec is None:
            spec = ClassSpec(names=tuple(class_cols))
        missing = [n for n in spec.names if n not in cols]
        if missing or not class_cols:
            raise DatasetLayoutError(
                f"{csv_path}: expected columns path,{','.join(spec.names)} (multi-hot 0/1) or path,tags; found {cols}"
            )
        try:
            labels = [tuple(int(float(r[n])) for n in spec.names) for r in rows]
        except ValueError as exc:
            raise DatasetLayoutError(f"{csv_path}: class columns must hold 0/1 ({exc})") from exc
    base = csv_path.parent
    records = []
    for r, lab in zip(rows, labels):
        img = base / r[path_col].strip()
        if not img.is_file():
            raise DatasetLayoutError(f"{csv_path}: image {img} listed in the CSV does not exist")
        mask = base / r["mask"].strip() if r.get("mask", "").strip() else None
        records.append(PatchRecord(image=img, name=img.stem, label=None if mask else lab, mask=mask))
    return spec, records


def _folder_records(base: Path, spec: ClassSpec | None):
    dirs = sorted(p for p in base.iterdir() if p.is_dir() and list_images(p))
    names = tuple(d.name for d in dirs)
    if spec is None:
        spec = ClassSpec(names=names)
    unknown = [n for n in names if n not in spec.names]
    if unknown:
        raise DatasetLayoutError(f"{base}: subfolders {unknown} are not classes {list(spec.names)}")
    records = []
    for d in dirs:
        lab = tuple(int(n == d.name) for n in spec.names)
        records += [PatchRecord(image=p, name=f"{d.name}/{p.stem}", label=lab) for p in list_images(d)]
    return spec, records


def generic_records(root: Path, split: Split) -> tuple[ClassSpec, list[PatchRecord]]:
    """Records of one split of a generic dataset (split folder if present, else the root)."""
    d = split_dir(root, split)
    base = d if d is not None else root
    cls_file = _find([base, root], ("classes.yaml", "classes.yml", "classes.json"))
    spec = load_classes_file(cls_file) if cls_file else None
    csv_path = _find([base] if d is not None else [root], ("labels.csv",))
    if csv_path is not None:
        spec, records = _csv_records(csv_path, split, filter_split=d is None, spec=spec)
    elif (base / "img").is_dir() and (base / "mask").is_dir():
        if spec is None:
            raise DatasetLayoutError(f"{base}: img/ + mask/ folders need a classes.yaml next to them")
        by_stem = {m.stem: m for m in list_images(base / "mask")}
        imgs = list_images(base / "img")
        missing = [p.name for p in imgs if p.stem not in by_stem]
        if missing:
            raise DatasetLayoutError(f"{base / 'img'}: no mask of the same name in mask/ for {missing[:3]}")
        records = [PatchRecord(image=p, name=p.stem, mask=by_stem[p.stem]) for p in imgs]
    else:
        spec, records = _folder_records(base, spec)
    if not records:
        raise DatasetLayoutError(
            f"no '{split.value}' patches found for the generic layout in {root} (expected "
            f"{EXAMPLES[Layout.GENERIC]}); found: {describe_folder(base)}"
        )
    return spec, records
