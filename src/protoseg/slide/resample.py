"""``read_at_scale``: the one way protoseg reads a level-0 box of a slide at another resolution.

``Slide.read`` / ``Slide.thumbnail`` / ``TileSet.read``, inference's ``RegionReader``, the region
patch dataset and the bank's ``add_from_slide`` all call it, so a pixel seen in training, in the bank
and at prediction time is produced by the same level choice and the same filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from protoseg.slide.errors import SlideRequestError
from protoseg.slide.pixels import as_rgb_uint8

#: a level whose downsample exceeds the wanted one by at most this factor still counts as "<= wanted"
#: (scanners record e.g. 4.0003 for a nominal 4x level)
LEVEL_TOLERANCE = 1.01
#: level-pixel slack under which a box counts as aligned to the level grid (read without resampling)
_ALIGNED = 1e-6
#: source pixels (bytes) above which a read is streamed in output blocks, each reading its own window,
#: so a thumbnail of a huge single-level slide never holds the whole level (bounded memory)
STREAM_BYTES = 16 << 20
#: float32 source values per block of output rows in the y pass (~2 MiB: stays in cache)
BLOCK_FLOATS = 1 << 19
#: y-pass float32 values per group of output rows that the x pass takes at once
GROUP_FLOATS = 1 << 20
#: source pixels per dense band of the x pass (see ``_bands``)
BAND_INPUTS = 48


@runtime_checkable
class SlideLike(Protocol):
    """What ``read_at_scale`` (and inference) needs of a slide: ``protoseg.slide.Slide`` or any stand-in.

    ``read_region`` takes ``location`` in level-0 pixels and ``size`` (w, h) in ``level`` pixels and
    returns anything ``as_rgb_uint8`` accepts (RGB/RGBA array or PIL image), like openslide.
    """

    level_count: int
    level_dimensions: Any  # sequence of (w, h)
    level_downsamples: Any  # sequence of float
    mpp: float | None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Any: ...


def best_level(downsamples: Sequence[float], downsample: float) -> int:
    """Coarsest level whose downsample is <= ``downsample`` (``LEVEL_TOLERANCE`` slack); 0 if none."""
    best, best_ds = 0, -math.inf
    for i, ds in enumerate(downsamples):
        ds = float(ds)
        if ds <= downsample * LEVEL_TOLERANCE and ds > best_ds:
            best, best_ds = i, ds
    return best


def read_level_box(slide: SlideLike, level: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """(h, w, 3) uint8 of ``level`` with top-left (x, y) in *level* pixels; outside the level is white.

    Uses ``slide.read_level`` when there is one (protoseg ``Slide``: level coordinates, no rounding);
    otherwise clips to the level and calls ``read_region`` with the level-0 location
    ``ceil(x * downsample)``, which maps back to level pixel ``x`` under both openslide's floor and
    ``ArraySlide``'s rounding for downsamples of 1 or >= 2.
    """
    read_level = getattr(slide, "read_level", None)
    if callable(read_level):
        return read_level(level, (x, y), (w, h))
    lw, lh = (int(v) for v in slide.level_dimensions[level])
    out = np.full((h, w, 3), 255, np.uint8)
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, lw), min(y + h, lh)
    if x1 <= x0 or y1 <= y0:
        return out
    ds = float(slide.level_downsamples[level])
    loc = (math.ceil(x0 * ds - 1e-9), math.ceil(y0 * ds - 1e-9))
    got = as_rgb_uint8(slide.read_region(loc, level, (x1 - x0, y1 - y0)))
    gh, gw = min(got.shape[0], y1 - y0), min(got.shape[1], x1 - x0)  # some backends clip the last row/col
    out[y0 - y : y0 - y + gh, x0 - x : x0 - x + gw] = got[:gh, :gw]
    return out


def read_at_scale(
    slide: SlideLike,
    box: Sequence[float],
    size: Sequence[int],
    *,
    level: int | None = None,
) -> np.ndarray:
    """Pixels of the level-0 box ``(x, y, w, h)`` resampled to exactly ``size`` = (w, h): (h, w, 3) uint8.

    The box may have fractional coordinates and may stick out of the slide (outside is white).
    Level-0 pixels per output pixel are ``w / size[0]`` and ``h / size[1]``.

    Level: ``level`` if given, else the coarsest level whose downsample is <= the smaller of the two
    factors (1% slack, ``best_level``), so we never upsample a coarse level when a finer one exists.

    Resampling, chosen on purpose (numpy, separable, one pass per axis):

    - A box that falls exactly on the chosen level's pixel grid at 1:1 is returned unresampled
      (scale 1 on level 0 gives the stored pixels bit for bit; so does a level of exactly the
      wanted downsample).
    - Shrinking axes (>= ~1 level pixel per output pixel) use exact *area averaging*: each output
      pixel is the mean of the level pixels under its footprint, partial pixels weighted by the
      covered fraction. This is antialiased at any factor, gives the
      same 2x2 / 4x4 block means a pyramid level stores, and stays correct at mild factors such as
      1.1 or 1.7. PIL's ``BOX`` is not used: at non-integer factors it keeps or drops whole pixels
      by their centre, so the result jumps with float rounding of the box and neighbouring tiles
      disagree; PIL's ``BILINEAR`` blurs more than area when shrinking.
    - Enlarging axes (a model finer than the finest level) use linear interpolation at the output
      pixel centres (half-pixel convention, edge pixels repeated at the slide border).
    - Mapping is sub-pixel: the box is not rounded, so output pixel i covers exactly
      [x + i * w / size[0], x + (i + 1) * w / size[0]) and depends only on the slide under it.
      Prediction-grid tiles read with different origins therefore agree where they overlap (up to
      float rounding), and the mean colour is preserved.
    - The box may leave the slide: outside is white, as for every read past the edge; inside the
      slide, linear taps next to the box come from the slide itself.
    """
    x, y, w, h = (float(v) for v in box)
    ow, oh = int(size[0]), int(size[1])
    if w < 0 or h < 0 or ow < 0 or oh < 0:
        raise SlideRequestError(f"box and output size must be >= 0, got box {tuple(box)} and size {tuple(size)}")
    if ow == 0 or oh == 0 or w == 0 or h == 0:
        return np.full((oh, ow, 3), 255, np.uint8)
    if level is None:
        level = best_level(slide.level_downsamples, min(w / ow, h / oh))
    if not 0 <= int(level) < int(slide.level_count):
        raise SlideRequestError(f"level {level} does not exist; this slide has levels 0..{slide.level_count - 1}")
    level = int(level)
    ds = float(slide.level_downsamples[level])
    sx0, sy0, sx1, sy1 = x / ds, y / ds, (x + w) / ds, (y + h) / ds  # the box in level pixels
    ix0, iy0 = round(sx0), round(sy0)
    if (
        abs(sx0 - ix0) < _ALIGNED
        and abs(sy0 - iy0) < _ALIGNED
        and abs(sx1 - sx0 - ow) < _ALIGNED
        and abs(sy1 - sy0 - oh) < _ALIGNED
    ):
        return read_level_box(slide, level, ix0, iy0, ow, oh)
    lw, lh = (int(v) for v in slide.level_dimensions[level])
    kx, ky = (sx1 - sx0) / ow, (sy1 - sy0) / oh
    if (ceil_w := math.ceil(sx1 - sx0) + 2) * (ceil_h := math.ceil(sy1 - sy0) + 2) * 3 > STREAM_BYTES and (
        ow > 1 or oh > 1
    ):
        return _streamed(slide, (x, y, w, h), (ow, oh), level, ceil_w, ceil_h)
    fx, fy = round(kx), round(ky)
    if (
        fx >= 2
        and fy >= 2
        and abs(kx - fx) < _ALIGNED
        and abs(ky - fy) < _ALIGNED
        and abs(sx0 - ix0) < _ALIGNED
        and abs(sy0 - iy0) < _ALIGNED
        and ix0 >= 0
        and iy0 >= 0
        and ix0 + fx * ow <= lw
        and iy0 + fy * oh <= lh
    ):  # integer factor on the level grid, inside the level: exact block means
        return _block_mean(read_level_box(slide, level, ix0, iy0, fx * ow, fy * oh), fx, fy)
    # the box's integer hull (white where it leaves the slide) + 1 pixel inside the slide for linear taps
    wx0, wy0 = math.floor(sx0 + _ALIGNED), math.floor(sy0 + _ALIGNED)
    wx1, wy1 = math.ceil(sx1 - _ALIGNED), math.ceil(sy1 - _ALIGNED)
    wx0, wy0 = min(wx0, max(0, wx0 - 1)), min(wy0, max(0, wy0 - 1))
    wx1, wy1 = max(wx1, min(lw, wx1 + 1)), max(wy1, min(lh, wy1 + 1))
    src = read_level_box(slide, level, wx0, wy0, wx1 - wx0, wy1 - wy0)
    return _resample(src, _taps(sx0 - wx0, sx1 - wx0, ow, wx1 - wx0), _taps(sy0 - wy0, sy1 - wy0, oh, wy1 - wy0))


def _block_mean(src: np.ndarray, fx: int, fy: int) -> np.ndarray:
    """Means of fy x fx blocks of uint8 (fy*oh, fx*ow, 3), rounded half to even like ``np.rint``."""
    oh, ow = src.shape[0] // fy, src.shape[1] // fx
    n = fx * fy
    acc_t = np.uint16 if n <= 257 else np.uint32
    rows = src.reshape(oh, fy, ow * fx * 3)
    acc = rows[:, 0].astype(acc_t)
    for j in range(1, fy):
        acc += rows[:, j]
    cols = acc.reshape(oh, ow, fx, 3)
    tot = cols[:, :, 0].copy()
    for j in range(1, fx):
        tot += cols[:, :, j]
    q, r = np.divmod(tot, acc_t(n))
    q += (2 * r > n) | ((2 * r == n) & (q % 2 == 1))
    return q.astype(np.uint8)


def _streamed(
    slide: SlideLike, box: tuple[float, float, float, float], size: tuple[int, int], level: int, sw: int, sh: int
) -> np.ndarray:
    """``read_at_scale`` of a large box in output blocks whose source windows stay near ``STREAM_BYTES``."""
    x, y, w, h = box
    ow, oh = size
    parts = math.ceil(sw * sh * 3 / STREAM_BYTES)
    # square-ish blocks of the output; each is an ordinary (sub-pixel exact) read_at_scale call
    nx = max(1, min(ow, round(math.sqrt(parts * ow / max(oh, 1)))))
    ny = max(1, min(oh, math.ceil(parts / nx)))
    bw, bh = -(-ow // nx), -(-oh // ny)
    out = np.empty((oh, ow, 3), np.uint8)
    px, py = w / ow, h / oh
    for a in range(0, oh, bh):
        b = min(oh, a + bh)
        for c in range(0, ow, bw):
            d = min(ow, c + bw)
            out[a:b, c:d] = read_at_scale(
                slide, (x + c * px, y + a * py, (d - c) * px, (b - a) * py), (d - c, b - a), level=level
            )
    return out


def _taps(start: float, stop: float, n: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(index, weight) arrays of shape (taps, n): output pixel i = sum_t weight[t, i] * input[index[t, i]].

    ``[start, stop)`` (input pixels, fractional) becomes ``n`` output pixels; ``length`` input pixels exist.
    Area weights (covered fraction of each input pixel) when shrinking, linear ones when enlarging.
    """
    k = (stop - start) / n  # input pixels per output pixel
    if k >= 1 / LEVEL_TOLERANCE:  # area: overlap of [j, j + 1) with the output pixel's footprint
        edges = np.clip(start + np.arange(n + 1) * k, 0.0, float(length))
        lo, hi = edges[:-1], edges[1:]
        first = np.minimum(np.floor(lo).astype(np.int64), length - 1)
        taps = int((np.ceil(hi).astype(np.int64) - first).max(initial=1))
        index = first[None, :] + np.arange(taps)[:, None]
        weight = np.clip(np.minimum(index + 1, hi) - np.maximum(index, lo), 0.0, None)
        weight /= np.maximum(weight.sum(axis=0, keepdims=True), 1e-12)
    else:  # linear at output pixel centres, edge pixels repeated
        centres = np.clip(start + (np.arange(n) + 0.5) * k - 0.5, 0.0, float(length - 1))
        j0 = np.floor(centres).astype(np.int64)
        t = centres - j0
        index, weight = np.stack([j0, j0 + 1]), np.stack([1.0 - t, t])
    return np.minimum(index, length - 1), weight.astype(np.float32)


def _csr(index: np.ndarray, weight: np.ndarray, length: int, offset: int = 0) -> Any:
    """The (n x length) sparse matrix of ``_taps`` output (columns shifted by ``-offset``); taps summed in order."""
    from scipy.sparse import csr_matrix

    taps, n = index.shape
    indptr = np.arange(0, n * taps + 1, taps)
    return csr_matrix((weight.T.ravel(), index.T.ravel() - offset, indptr), shape=(n, length))


def _bands(index: np.ndarray, weight: np.ndarray, width: int) -> list[tuple[int, int, int, int, np.ndarray]]:
    """``_taps`` as dense bands ``(c0, c1, j0, j1, mat)``: outputs ``j0:j1`` = inputs ``c0:c1`` @ ``mat``.

    ``width`` outputs per band keeps each band's matrix small, so a band product wastes few multiplications
    on zeros while BLAS still does the work; zeros add exactly nothing, so a pixel sums the same taps.
    """
    n = index.shape[1]
    bands = []
    for j0 in range(0, n, width):
        j1 = min(n, j0 + width)
        idx, w = index[:, j0:j1], weight[:, j0:j1]
        c0, c1 = int(idx.min()), int(idx.max()) + 1
        mat = np.zeros((c1 - c0, j1 - j0), np.float32)
        cols = np.arange(j1 - j0)
        for t in range(idx.shape[0]):  # one tap per output at a time: no repeated (row, col) pair
            mat[idx[t] - c0, cols] += w[t]
        bands.append((c0, c1, j0, j1, mat))
    return bands


Taps = tuple[np.ndarray, np.ndarray]


def _resample(src: np.ndarray, x_taps: Taps, y_taps: Taps) -> np.ndarray:
    """(h, w, 3) uint8 -> (oh, ow, 3) uint8: y pass then x pass in float32, rounded once at the end.

    Groups of output rows (``GROUP_FLOATS`` y-pass values each) are built from blocks whose float32 source
    rows stay cache-sized (``BLOCK_FLOATS``); the y pass is a sparse product over a block's source rows,
    split into colour planes so the x pass is a product along contiguous rows, done by BLAS on small dense
    bands (``_bands``): no transposes, no float copy of the whole window.
    """
    (hx, wx), (hy, wy) = x_taps, y_taps
    h, w = src.shape[:2]
    ow, oh = hx.shape[1], hy.shape[1]
    rows = src.reshape(h, w * 3)
    bands = _bands(hx, wx, max(1, int(BAND_INPUTS * ow / w)))
    out = np.empty((oh, ow, 3), np.uint8)
    group = max(1, min(oh, GROUP_FLOATS // (w * 3)))
    step = max(1, min(group, int(BLOCK_FLOATS * oh / (w * 3 * h))))
    for a in range(0, oh, group):
        b = min(oh, a + group)
        planes = np.empty((b - a, 3, w), np.float32)
        for i in range(a, b, step):
            j = min(b, i + step)
            r0, r1 = int(hy[:, i:j].min()), int(hy[:, i:j].max()) + 1
            tmp = _csr(hy[:, i:j], wy[:, i:j], r1 - r0, r0) @ rows[r0:r1].astype(np.float32)  # (j - i, w * 3)
            for c in range(3):
                planes[i - a : j - a, c] = tmp[:, c::3]
        flat = planes.reshape(-1, w)
        res = np.empty((flat.shape[0], ow), np.float32)
        for c0, c1, j0, j1, mat in bands:
            np.matmul(flat[:, c0:c1], mat, out=res[:, j0:j1])
        np.rint(res, out=res)  # convex weights keep every value within [0, 255]
        res3 = res.reshape(b - a, 3, ow)
        for c in range(3):
            out[a:b, :, c] = res3[:, c]
    return out
