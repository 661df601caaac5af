"""Whole-slide batch prediction, Qt-free: ``predict_slide_to_omezarr`` resuming, reporting (done, total) and
stopping on cancel with the finished chunks kept."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protoseg.cancel import Cancelled, CancelLike

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchOutcome:
    """Result of :func:`run_batch`: the output folder, the library's summary (None if cancelled), progress."""

    path: Path
    result: Any
    cancelled: bool
    done: int
    total: int


def run_batch(
    predictor: Any,
    slide: Any,
    out_dir: str | Path,
    *,
    report: Callable[[tuple[int, int]], None],
    cancel: CancelLike | None = None,
    **kwargs: Any,
) -> BatchOutcome:
    """``predict_slide_to_omezarr`` (resuming) reporting (done, total); ``cancel`` stops it at the next chunk
    (finished chunks are kept, so running it again resumes)."""
    from protoseg.infer import predict_slide_to_omezarr

    state = [0, 0]

    def progress(done: int, total: int) -> None:
        state[:] = [int(done), int(total)]
        report((int(done), int(total)))

    try:
        result = predict_slide_to_omezarr(
            predictor, slide, out_dir, resume=True, progress=progress, cancel=cancel, **kwargs
        )
    except Cancelled:
        logger.info("batch prediction to %s cancelled at %d/%d chunks", out_dir, *state)
        return BatchOutcome(Path(out_dir), None, True, state[0], state[1])
    return BatchOutcome(Path(out_dir), result, False, result.chunks_total, result.chunks_total)


def whole_slide_job(
    *,
    report: Callable[[tuple[int, int]], None],
    cancel: CancelLike,
    checkpoint: str,
    device: str,
    batch_size: int,
    tta: bool,
    slide: str,
    out_dir: str,
    **kwargs: Any,
) -> BatchOutcome:
    """:func:`run_batch` as a child-process job (``protoseg.child``): loads the model, then predicts ``slide``."""
    report((0, 0))  # busy while the model loads
    from protoseg.infer import Predictor

    predictor = Predictor(Path(checkpoint), device=device, batch_size=batch_size, tta=tta)
    return run_batch(predictor, slide, out_dir, report=report, cancel=cancel, **kwargs)
