"""Whole-slide prediction to an OME-Zarr with a bounded, resumable pipeline.

reader threads (read + decode tiles) -> bounded queue -> batched model (calling thread) ->
finish (blend, quantise, write chunk, mark it done): on the CPU (``writers=0``) between batches, the chunks
a batch completed in parallel on as many threads as the model uses while it waits; on an accelerator in
writer threads behind a bounded queue, concurrent with the model. Memory is bounded by the queues and the
strip plan (see ``plan``), not by the slide size. Finished level-0 chunks are recorded in the ``done`` array
after their data, at most ``done_record.DONE_INTERVAL_S`` later (and at the end,
also on errors and cancel), so a killed run restarted with ``resume=True`` skips finished chunks,
redoes at most that much work, and ends with the same bytes. Coarse levels are built while level 0 is
written (``pyramid_stream``: a parent as soon as its children are in; background-only chunks are constants);
what that leaves (resumed runs, parents beyond its memory bound) is rebuilt from the stored level at the end.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from protoseg.cancel import CancelLike, Progress, check_cancelled
from protoseg.infer.chunks import DEFAULT_CHUNK, SlideChunks, TissueLike
from protoseg.infer.done_record import DoneRecord
from protoseg.infer.errors import InferenceError, OutputError
from protoseg.infer.identity import differences, slide_identity
from protoseg.infer.omezarr import (
    check_arrays,
    check_output_dir,
    create_prediction_zarr,
    missing_chunks,
    open_prediction,
    read_protoseg_attrs,
)
from protoseg.infer.plan import ChunkStep, default_strip, plan_steps, strip_order
from protoseg.infer.predictor import Predictor
from protoseg.infer.pyramid import ChunkData
from protoseg.infer.pyramid_stream import StreamingPyramid
from protoseg.infer.reader import SlideLike, open_any, slide_name
from protoseg.infer.result import BatchResult
from protoseg.infer.tile_pipeline import TilePipeline

logger = logging.getLogger(__name__)

#: Recorded keys that may differ on resume (the checkpoint file may move; its weights hash is compared).
_MAY_DIFFER = ("predictor.checkpoint",)


def _forget_missing_chunks(out: Path) -> int:
    """Un-mark level-0 chunks whose files are gone (deleted or lost), so the resume recomputes them."""
    pred = open_prediction(out, mode="r+")
    check_arrays(pred)
    lost = missing_chunks(pred, 0)
    for _, r, c, _ in lost:
        pred.group["done"][r, c] = 0
    attrs = dict(pred.group.attrs["protoseg"])
    attrs.update(complete=False, pyramid_complete=False)
    pred.group.attrs["protoseg"] = attrs
    if lost:
        logger.warning("%s: %d chunk file(s) missing; they will be predicted again", out, len({x[1:3] for x in lost}))
    return len(lost)


def _open_output(out: Path, layout: dict[str, Any], predictor: Predictor, slide: str, resume: bool, overwrite: bool):
    """Root group to write: a matching earlier run (``resume``), a fresh folder, or a replaced one (``overwrite``).

    Resuming requires the same slide (path, size, content fingerprint) and predictor (weights hash, classes,
    mpp, tile, overlap, TTA...): otherwise ``OutputError`` names what differs.
    """
    existing = check_output_dir(out, overwrite=overwrite)
    if existing and not overwrite:
        attrs = read_protoseg_attrs(out) or {}
        diff = differences(attrs.get("layout", {}), layout, ignore=_MAY_DIFFER)
        if diff:
            raise OutputError(
                f"output {out} holds a prediction of another slide or model ({'; '.join(diff)} differ), so it "
                "cannot be resumed; choose another output folder, or pass overwrite=True (--overwrite) to replace it."
            )
        if not resume:
            raise OutputError(
                f"output {out} already exists; pass resume=True to continue it, overwrite=True (--overwrite) "
                "to replace it, or choose another output folder."
            )
        logger.info("resuming prediction in %s", out)
        _forget_missing_chunks(out)
        return open_prediction(out, mode="r+").group
    return create_prediction_zarr(out, predictor.classes, layout, slide, overwrite=existing)


class _Arrays:
    """Zarr arrays of the output, opened once (group lookups re-read metadata)."""

    def __init__(self, root: Any, levels: int, chunk: int) -> None:
        every = {"write_empty_chunks": True}  # every chunk stored: a missing chunk file then means damage
        self.probs = [root["probs"][str(k)].with_config(every) for k in range(levels)]
        self.mask = [root["mask"][str(k)].with_config(every) for k in range(levels)]
        self.done = root["done"]
        self.chunk = chunk

    def write(self, level: int, cy: int, cx: int, data: ChunkData) -> None:
        h, w, c = *data.mask.shape, self.chunk
        ys, xs = slice(cy * c, cy * c + h), slice(cx * c, cx * c + w)
        self.probs[level][:, ys, xs] = data.probs
        self.mask[level][ys, xs] = data.mask


def predict_slide_to_omezarr(
    predictor: Predictor,
    slide: SlideLike | str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    slide_mpp: float | None = None,
    tissue_only: bool = True,
    tissue: TissueLike | None = None,
    chunk: int = DEFAULT_CHUNK,
    resume: bool = True,
    overwrite: bool = False,
    progress: Progress | None = None,
    readers: int | None = None,
    strip: int | None = None,
    cancel: CancelLike | None = None,
    writers: int | None = None,
) -> BatchResult:
    """Predict a whole slide into an OME-Zarr folder ``out_dir``; see the module docstring.

    ``readers`` / ``writers``: decode and blend+write threads (default from the device and the cores);
    ``writers=0`` (the CPU default) finishes chunks between batches, on as many threads as the model uses.
    ``strip``: chunk columns per strip of the plan (``plan``); default: the widest whose kept tile
    predictions fit ``plan.STRIP_MEMORY_BUDGET``.
    ``cancel`` (a ``CancelToken``) stops the run at the next chunk with ``protoseg.cancel.Cancelled``;
    finished chunks stay recorded, so a later call with ``resume=True`` continues from them.
    """
    if writers is not None and int(writers) < 0:
        raise InferenceError(f"writers must be >= 0 (0 = in the model's thread), got {writers}")
    start = time.perf_counter()
    slide_arg = slide
    name = str(Path(slide).resolve()) if isinstance(slide, (str, os.PathLike)) else slide_name(slide)
    slide = open_any(slide)
    layout = SlideChunks(predictor, slide, slide_mpp=slide_mpp, chunk=chunk, tissue_only=tissue_only, tissue=tissue)
    out = Path(out_dir)
    described = layout.describe()
    described["predictor"]["model_sha256"] = predictor.weights_sha256()
    file = Path(name) if isinstance(slide_arg, (str, os.PathLike)) else getattr(slide, "path", None)
    described["slide_identity"] = slide_identity(file, layout.geom.reader.read, layout.width, layout.height)
    root = _open_output(out, described, predictor, name, resume, overwrite)
    arrays = _Arrays(root, len(layout.levels), layout.chunk)
    record = DoneRecord(arrays.done)
    done = record.marks.astype(bool)
    total = int(done.size)
    counts = {"done": int(done.sum()), "background": 0, "predicted": 0}
    resumed = counts["done"]
    tiles_before = predictor.tiles_predicted

    book = threading.Lock()  # writer threads share the one-chunk "done" array and the counters

    def mark(cy: int, cx: int, data: ChunkData, predicted: bool = True) -> None:
        arrays.write(0, cy, cx, data)  # its own zarr chunk: writers run this in parallel
        if predicted:  # background chunks are known to the pyramid up front
            pyramid.add(0, cy, cx, data.probs)
        with book:
            record.mark(cy, cx)
            counts["done"] += 1
            if progress is not None:
                progress(counts["done"], total)
        check_cancelled(cancel, "whole-slide prediction")

    def finish(step: ChunkStep, tiles: dict, pool: Executor | None = None, parts: int = 1) -> None:
        mark(*step.chunk, layout.finish(*step.chunk, tiles, pool, parts))
        with book:
            counts["predicted"] += 1

    if progress is not None:
        progress(counts["done"], total)
    rows, cols = layout.grid0.shape
    todo = [(r, c) for r, c in layout.grid0 if not done[r, c]]
    tissue_chunks = {(r, c) for r, c in todo if layout.has_tissue(r, c)}
    background = [ch for ch in todo if ch not in tissue_chunks]
    # coarse levels are built as chunks finish; a resumed run builds them at the end from the stored level 0
    grids = [layout.chunk_grid(k) for k in range(len(layout.levels))]
    pyramid = StreamingPyramid(grids, layout.channels, arrays.write, background, enabled=not resumed)
    try:
        for r, c in background:
            mark(r, c, layout.background(r, c), predicted=False)
            counts["background"] += 1
        if tissue_chunks:
            if strip is None:
                tile_bytes = 4 * layout.channels * predictor.tile_size**2  # float32 scores per tile
                strip = default_strip(layout.geom.grid, layout.chunk, tile_bytes)
            order = strip_order(rows, cols, strip, include=lambda ch: ch in tissue_chunks)
            steps = plan_steps(order, layout.tiles_for_chunk, window=strip)
            TilePipeline(layout, steps, finish, readers, cancel, writers).run()
    finally:  # finished chunks are recorded also when the run fails or is cancelled (resume keeps them)
        with book:
            record.flush()
    pyramid.build_missing(lambda level, y0, y1, x0, x1: arrays.probs[level][:, y0:y1, x0:x1])
    attrs = dict(root.attrs["protoseg"])
    attrs.update(complete=True, pyramid_complete=True)
    root.attrs["protoseg"] = attrs
    result = BatchResult(
        out,
        total,
        resumed,
        counts["background"],
        counts["predicted"],
        predictor.tiles_predicted - tiles_before,
        time.perf_counter() - start,
    )
    logger.info("predicted %s -> %s: %s", name, out, result)
    return result
