"""Bounded region outlines: every tagged polygon is cheap to tile and to repair (shapely).

Tiling and validity checks grow with an outline's vertex count, and repairing a self-crossing outline
(``shapely.make_valid``) with its number of crossings: a random 300-vertex outline takes seconds, a
crafted 10^5-vertex one never finishes. So an outline is simplified (Douglas-Peucker at
``SIMPLIFY_PX``, far below any patch) when it has more than ``MAX_VERTICES``, refused with its count
when still longer, and a self-crossing one is refused when it crosses itself more than ``MAX_CROSSINGS``
times. QuPath and napari annotations stay far below both limits.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from protoseg.data.errors import RegionError

logger = logging.getLogger(__name__)

#: Most vertices an outline keeps (after simplifying): tiling a region of that many takes a few seconds.
MAX_VERTICES = 50_000
#: Douglas-Peucker tolerance (level-0 px) for outlines longer than ``MAX_VERTICES``: invisible in any patch.
SIMPLIFY_PX = 1.0
#: Most self-crossings an outline may have and still be repaired (``shapely.make_valid``).
MAX_CROSSINGS = 1_000
_CHUNK = 1024  # vertices per Douglas-Peucker run (recursion depth; thread stacks can be 512 KiB)
_FIX = "simplify or split it (QuPath: Objects > Annotations > Simplify shape), or redraw it"


def bounded_outline(poly: np.ndarray) -> np.ndarray:
    """The (N, 2) outline, simplified to ``SIMPLIFY_PX`` when longer than ``MAX_VERTICES`` (logged);
    RegionError naming the count when it is still longer, or when it crosses itself too often to repair."""
    import shapely

    if len(poly) > MAX_VERTICES:
        small = simplified(poly, SIMPLIFY_PX)
        if len(small) > MAX_VERTICES or len(small) < 3:
            raise RegionError(
                f"a region outline has {len(poly):,} vertices ({len(small):,} after simplifying to "
                f"{SIMPLIFY_PX:g} px), more than {MAX_VERTICES:,}: {_FIX}"
            )
        logger.info("region outline of %d vertices simplified to %d (%g px)", len(poly), len(small), SIMPLIFY_PX)
        poly = small
    if not shapely.is_valid(shapely.Polygon(poly)):
        crossings = count_crossings(poly, MAX_CROSSINGS)
        if crossings > MAX_CROSSINGS:
            raise RegionError(
                f"a region outline ({len(poly):,} vertices) crosses itself more than {MAX_CROSSINGS:,} times and "
                f"cannot be repaired in reasonable time: {_FIX}"
            )
    return poly


def simplified(poly: np.ndarray, tolerance: float) -> np.ndarray:
    """Douglas-Peucker simplification of a closed outline, ``_CHUNK`` vertices at a time: GEOS recurses once per
    kept vertex and overflows the stack on a long zigzag (crash at ~50,000), so each run it sees is short."""
    import shapely

    ring = np.vstack([poly, poly[:1]])
    runs = [shapely.linestrings(ring[s : s + _CHUNK + 1]) for s in range(0, len(poly), _CHUNK)]  # shared ends
    out = shapely.simplify(np.array(runs, dtype=object), tolerance, preserve_topology=False)  # lines: no repair
    return np.vstack([shapely.get_coordinates(line)[:-1] for line in out])


def count_crossings(poly: np.ndarray, cap: int) -> int:
    """Pairs of non-neighbouring edges of the closed outline that touch or cross; stops counting past ``cap``
    (the edges are queried in growing batches, so a hopeless outline is found after a few of them)."""
    import shapely

    n = len(poly)
    edges = shapely.linestrings(np.stack([poly, np.roll(poly, -1, axis=0)], axis=1))
    tree = shapely.STRtree(edges)
    found, start, batch = 0, 0, 64
    while start < n:
        stop = min(n, start + batch)
        a, b = tree.query(edges[start:stop], predicate="intersects")
        a = a + start
        gap = np.abs(a - b)
        found += int(np.count_nonzero((gap > 1) & (gap < n - 1)))  # not itself, not a neighbour
        if found // 2 > cap:
            break
        start, batch = stop, min(batch * 2, 8192)
    return found // 2


def valid_shape(poly: np.ndarray) -> Any:
    """The outline as a valid shapely geometry; a self-crossing outline is repaired (``bounded_outline``
    has bounded its crossings, so the repair is quick)."""
    import shapely

    shape = shapely.Polygon(poly)
    return shape if shape.is_valid else shapely.make_valid(shape)
