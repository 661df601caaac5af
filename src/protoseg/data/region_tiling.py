"""Where patches fall on class-tagged slide regions: the tiling training uses, its per-class counts and the
regions too small to give a patch. Geometry only (no torch), so a GUI can show it before training starts."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from protoseg.classes import ClassSpec
from protoseg.data.errors import RegionError
from protoseg.data.outline import valid_shape
from protoseg.data.regions import RegionAnnotation, RegionSource, clip_to_slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionPatch:
    """A patch box (level-0 x, y, width, height) on a slide with its image-level label."""

    slide_path: str
    box: tuple[int, int, int, int]
    label: tuple[int, ...]


#: Training tiles overlap by half a patch (stride = patch / 2): dense coverage of small tagged regions.
DENSE_STRIDE_FRACTION = 0.5


def dense_stride(patch_size: int) -> int:
    """Stride of the training tiling (``DENSE_STRIDE_FRACTION`` of a patch), in target pixels."""
    return max(1, round(int(patch_size) * DENSE_STRIDE_FRACTION))


@dataclass(frozen=True)
class SmallRegion:
    """A tagged region that yielded no patch (no tile of the grid lies enough inside it)."""

    index: int  # position in the region list
    classes: tuple[str, ...]
    slide_path: str
    width_um: float  # bounding box of the region
    height_um: float
    area_um2: float

    def describe(self, patch_um: float) -> str:
        """One line naming the region and why it gave no patch."""
        tags = "+".join(self.classes) or "untagged"
        return (
            f"region {self.index + 1} ({tags}) on {Path(self.slide_path).name}: {self.width_um:.0f} x "
            f"{self.height_um:.0f} µm, smaller than one {patch_um:.0f} µm patch"
        )


@dataclass(frozen=True)
class RegionTiling:
    """Patches tiled over tagged regions, with the per-class counts and the regions too small to give one."""

    patches: tuple[RegionPatch, ...]
    class_names: tuple[str, ...]
    patch_size: int
    stride: int
    mpp: float
    min_inside: float
    per_region: tuple[int, ...]  # patches each region contributed (after duplicates were merged)
    too_small: tuple[SmallRegion, ...]
    slide_mpp: tuple[tuple[str, float | None], ...] = ()

    @property
    def per_class(self) -> dict[str, int]:
        """Patches whose label contains each class (a patch with two tags counts for both)."""
        if not self.patches:
            return dict.fromkeys(self.class_names, 0)
        sums = np.array([p.label for p in self.patches], dtype=np.int64).sum(axis=0)
        return {n: int(c) for n, c in zip(self.class_names, sums)}

    @property
    def patch_um(self) -> float:
        """Side of one patch in µm."""
        return self.patch_size * self.mpp

    def summary(self) -> str:
        """One-line report: patch count per class at the patch size and resolution, and the small regions."""
        counts = ", ".join(f"{n} {c}" for n, c in self.per_class.items())
        text = (
            f"{len(self.patches)} patches of {self.patch_size} px at {self.mpp:g} µm/px "
            f"(stride {self.stride} px) from {len(self.per_region)} regions: {counts}"
        )
        if self.too_small:
            names = "; ".join(r.describe(self.patch_um) for r in self.too_small)
            text += f"; {len(self.too_small)} region(s) too small, no patch: {names}"
        return text


def _default_opener(path: str):
    from protoseg.slide import open_slide

    return open_slide(path)


def _read_slide_mpp(path: str, opener: Callable[[str], object] | None) -> float | None:
    """The slide's level-0 µm/px (None when the file records none); the handle is closed again."""
    slide = (opener or _default_opener)(path)
    try:
        mpp = getattr(slide, "mpp", None)
        return float(mpp) if isinstance(mpp, (int, float)) and mpp > 0 else None
    finally:
        if hasattr(slide, "close"):
            slide.close()


def within_slides(
    regions: Sequence[RegionAnnotation], opener: Callable[[str], object] | None = None
) -> tuple[RegionAnnotation, ...]:
    """Regions clipped to their slide's level-0 extent (warning); one wholly outside is a RegionError. This
    bounds the tiling: coordinates such as 1e7 or 1e300 cannot make it run (nearly) forever."""
    sizes: dict[str, tuple[int, int] | None] = {}
    out: list[RegionAnnotation] = []
    for r in regions:
        if r.slide_path not in sizes:
            slide = (opener or _default_opener)(r.slide_path)
            dims = getattr(slide, "level_dimensions", None)
            sizes[r.slide_path] = tuple(dims[0]) if dims else None  # type: ignore[assignment]
            if hasattr(slide, "close"):
                slide.close()
        size = sizes[r.slide_path]
        out += clip_to_slide(r, size) if size is not None else [r]
    return tuple(out)


def _slide_scale(path: str, mpp: float, slide_mpp: dict[str, float | None], fallback_mpp: float | None) -> float:
    """Level-0 pixels per target pixel of one slide (from its mpp, else ``fallback_mpp``)."""
    smpp = slide_mpp.get(path) or fallback_mpp
    if smpp is None:
        raise RegionError(
            f"slide {path} has no microns-per-pixel metadata; pass fallback_mpp= (e.g. 0.5 for 20x) to WsiRegionDataset"
        )
    return float(mpp) / float(smpp)


def _shape(region: RegionAnnotation):
    """The region as a valid shapely geometry (self-intersecting outlines repaired; see ``data.outline``)."""
    return valid_shape(region.polygon)


def _overlap_fractions(shapes: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Fraction of each box's area inside the matching shape; exact, but the (costly) intersection is
    computed only for boxes on a shape's outline (boxes fully inside count 1, disjoint ones 0)."""
    import shapely

    frac = np.zeros(len(boxes), dtype=np.float64)
    if not len(boxes):
        return frac
    hit = shapely.intersects(shapes, boxes)
    full = hit & shapely.contains_properly(shapes, boxes)
    frac[full] = 1.0
    edge = np.flatnonzero(hit & ~full)
    if edge.size:
        frac[edge] = shapely.area(shapely.intersection(boxes[edge], shapes[edge])) / shapely.area(boxes[edge])
    return frac


def tile_regions(
    regions: Sequence[RegionAnnotation],
    classes: ClassSpec | Sequence[str],
    mpp: float,
    patch_size: int,
    stride: int | None = None,
    min_inside: float = 0.5,
    jitter: float = 0.0,
    seed: int = 0,
    fallback_mpp: float | None = None,
    slide_opener: Callable[[str], object] | None = None,
    slide_mpp: dict[str, float | None] | None = None,
) -> RegionTiling:
    """Tile every region with ``patch_size``-px squares at ``mpp`` every ``stride`` px (default one patch).

    The grid is centred on each region's bounding box; a tile is kept when at least ``min_inside`` of
    its area lies inside that region (exact polygon areas, shapely), and is labelled with the tags of
    every region of the slide it overlaps. Slides are opened only to read their mpp (``slide_mpp``
    may supply them). Regions that give no tile are listed in ``too_small``.
    """
    import shapely

    spec = classes if isinstance(classes, ClassSpec) else ClassSpec(names=tuple(classes))
    if not mpp > 0 or int(patch_size) <= 0:
        raise RegionError(f"mpp and patch_size must be positive (got {mpp}, {patch_size})")
    stride = int(stride or patch_size)
    if stride <= 0:
        raise RegionError(f"stride must be positive (got {stride})")
    regions = tuple(regions)
    unknown = sorted({c for r in regions for c in r.classes} - set(spec.names))
    if unknown:
        raise RegionError(f"region tags {unknown} are not classes {list(spec.names)}; fix the tags or the ClassSpec")
    regions = within_slides(regions, slide_opener)
    mpps = dict(slide_mpp or {})
    for r in regions:
        if r.slide_path not in mpps:
            mpps[r.slide_path] = _read_slide_mpp(r.slide_path, slide_opener)
    shapes = [_shape(r) for r in regions]
    shapely.prepare(shapes)  # fast contains / intersects tests against each region
    by_slide: dict[str, list[int]] = {}
    for i, r in enumerate(regions):
        by_slide.setdefault(r.slide_path, []).append(i)
    trees = {path: shapely.STRtree([shapes[i] for i in idx]) for path, idx in by_slide.items()}
    rng = np.random.default_rng(seed)
    seen: set[tuple[str, int, int]] = set()
    patches: list[RegionPatch] = []
    per_region: list[int] = []
    small: list[SmallRegion] = []
    for index, (region, shape) in enumerate(zip(regions, shapes)):
        f = _slide_scale(region.slide_path, mpp, mpps, fallback_mpp)
        side, step = patch_size * f, stride * f
        x0, y0, x1, y1 = region.bounds
        nx = max(1, math.floor((x1 - x0 - side) / step) + 1)
        ny = max(1, math.floor((y1 - y0 - side) / step) + 1)
        # centre the grid on the bounding box so a region about one patch wide still gets a patch
        ox = x0 + ((x1 - x0) - (side + (nx - 1) * step)) / 2
        oy = y0 + ((y1 - y0) - (side + (ny - 1) * step)) / 2
        same = by_slide[region.slide_path]
        candidates = added = 0
        for j in range(ny):  # one row at a time keeps memory bounded on large regions
            xs, ys = ox + np.arange(nx) * step, np.full(nx, oy + j * step)
            if jitter:
                d = rng.uniform(-1, 1, (nx, 2)) * jitter * step
                xs, ys = xs + d[:, 0], ys + d[:, 1]
            boxes = shapely.box(xs, ys, xs + side, ys + side)
            inside = _overlap_fractions(np.full(nx, shape, dtype=object), boxes)
            keep = np.flatnonzero(inside >= min_inside)
            candidates += keep.size
            if not keep.size:
                continue
            tile_i, tree_i = trees[region.slide_path].query(boxes[keep], predicate="intersects")
            others = np.array([shapes[same[t]] for t in tree_i], dtype=object)
            overlap = _overlap_fractions(others, boxes[keep][tile_i])
            tags: list[set[str]] = [set() for _ in keep]
            for ti, t, a in zip(tile_i, tree_i, overlap):
                if a > 1e-9:
                    tags[ti].update(regions[same[t]].classes)
            for n, k in enumerate(keep):
                key = (region.slide_path, round(float(xs[k])), round(float(ys[k])))
                if key in seen:
                    continue
                seen.add(key)
                label = tuple(int(c in tags[n]) for c in spec.names)
                box = (key[1], key[2], max(1, round(side)), max(1, round(side)))
                patches.append(RegionPatch(region.slide_path, box, label))
                added += 1
        per_region.append(added)
        if candidates == 0:
            um = float(mpp) / f  # level-0 µm per pixel of this slide
            small.append(
                SmallRegion(
                    index, region.classes, region.slide_path, (x1 - x0) * um, (y1 - y0) * um, shape.area * um * um
                )
            )
    return RegionTiling(
        patches=tuple(patches),
        class_names=spec.names,
        patch_size=int(patch_size),
        stride=stride,
        mpp=float(mpp),
        min_inside=float(min_inside),
        per_region=tuple(per_region),
        too_small=tuple(small),
        slide_mpp=tuple(mpps.items()),
    )


def tile_region_source(
    source: RegionSource,
    patch_size: int,
    stride: int | None = None,
    min_inside: float = 0.5,
    slide_opener: Callable[[str], object] | None = None,
) -> RegionTiling:
    """The tiling training uses for ``source`` at ``patch_size`` (stride default ``dense_stride``): counts
    per class and too-small regions to show before training starts."""
    return tile_regions(
        source.regions,
        source.classes,
        source.mpp,
        patch_size,
        stride=stride or dense_stride(patch_size),
        min_inside=min_inside,
        fallback_mpp=source.fallback_mpp,
        slide_opener=slide_opener,
    )
