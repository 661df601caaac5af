"""Predict many slides on a dask.distributed cluster (a LocalCluster unless a scheduler is given).

Each task loads the checkpoint on its worker and runs the batch prediction of one slide into
``out_dir/<slide name>.zarr``; failures are caught per slide and reported, so one bad slide does
not stop the others. Re-running resumes unfinished outputs.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protoseg.infer.errors import InferenceError
from protoseg.runtime import bounded_workers
from protoseg.slide.formats import slide_stem

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide: output folder, or the error message."""

    slide: str
    output: str
    ok: bool
    error: str | None = None
    chunks: int = 0
    tiles: int = 0
    seconds: float = 0.0


def output_names(slide_paths: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]) -> list[Path]:
    """``out_dir/<stem>.zarr`` per slide; repeated stems get ``-2``, ``-3``... suffixes."""
    seen: dict[str, int] = {}
    outs = []
    for p in slide_paths:
        stem = re.sub(r"[^\w.+-]", "_", slide_stem(Path(p).name)) or "slide"
        stem = re.sub(r"[^\w.+-]", "_", stem) or "slide"
        seen[stem] = seen.get(stem, 0) + 1
        outs.append(Path(out_dir) / (f"{stem}.zarr" if seen[stem] == 1 else f"{stem}-{seen[stem]}.zarr"))
    return outs


def predict_one(slide: str, checkpoint: str, out: str, options: dict[str, Any]) -> SlideOutcome:
    """Worker task: load the checkpoint, predict one slide, never raise (errors go in the outcome)."""
    import torch

    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.predictor import Predictor

    start = time.perf_counter()
    opts = dict(options)
    threads = opts.pop("torch_threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    predictor_kw = opts.pop("predictor", {})
    try:
        predictor = Predictor(checkpoint, **predictor_kw)
        res = predict_slide_to_omezarr(predictor, slide, out, **opts)
        return SlideOutcome(slide, out, True, None, res.chunks_total, res.tiles_predicted, time.perf_counter() - start)
    except Exception as exc:
        logger.exception("prediction of %s failed", slide)
        return SlideOutcome(slide, out, False, f"{type(exc).__name__}: {exc}", seconds=time.perf_counter() - start)


def _memory_limit(n_workers: int) -> int:
    import psutil

    return int(psutil.virtual_memory().total * 0.85 / max(1, n_workers))


def cluster_api() -> tuple[Any, Any, Any]:
    """dask.distributed's Client, LocalCluster and as_completed; a one-line error when it is not installed
    (an optional extra: importing it costs ~0.3 s, and dask imports it at every first compute when present)."""
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise InferenceError(
            "several slides at once (--workers > 1 or --scheduler) need dask.distributed: "
            "pip install 'protoseg[cluster]' (or predict with --workers 1)"
        ) from exc
    return Client, LocalCluster, as_completed


def predict_many(
    slide_paths: Sequence[str | os.PathLike[str]],
    checkpoint_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    scheduler: str | None = None,
    n_workers: int = 2,
    *,
    processes: bool = True,
    predictor_options: dict[str, Any] | None = None,
    on_result: Callable[[SlideOutcome], Any] | None = None,
    **batch_options: Any,
) -> list[SlideOutcome]:
    """Predict every slide; returns outcomes in input order. ``batch_options`` go to
    ``predict_slide_to_omezarr`` (slide_mpp, tissue_only, chunk, resume, overwrite...)."""
    Client, LocalCluster, as_completed = cluster_api()
    from protoseg.infer.omezarr import check_output_parent
    from protoseg.models.checkpoint import load_checkpoint

    load_checkpoint(checkpoint_path)  # fail fast, with a clear error, before starting any cluster
    check_output_parent(out_dir)
    paths = [str(Path(p).resolve()) for p in slide_paths]
    outs = [str(o) for o in output_names(paths, out_dir)]
    options = dict(batch_options)
    options["predictor"] = dict(predictor_options or {})
    cluster = None
    if scheduler:
        client = Client(scheduler)
    else:
        n_workers = bounded_workers(max(1, int(n_workers)), "--workers (n_workers)")
        if processes:  # torch's thread count is per process: thread workers must not change the caller's
            options.setdefault("torch_threads", max(1, (os.cpu_count() or 1) // n_workers))
        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=1,
            processes=processes,
            memory_limit=_memory_limit(n_workers),
            dashboard_address=None,
            silence_logs=logging.WARNING,
        )
        client = Client(cluster)
    logger.info("predicting %d slides on %s", len(paths), client.scheduler.address if client.scheduler else scheduler)
    results: dict[str, SlideOutcome] = {}
    try:
        futures = {
            client.submit(predict_one, p, str(checkpoint_path), o, options, pure=False): p for p, o in zip(paths, outs)
        }
        for fut in as_completed(list(futures)):
            slide = futures[fut]
            try:
                outcome = fut.result()
            except Exception as exc:  # noqa: BLE001 - worker died or task lost: reported per slide
                outcome = SlideOutcome(slide, outs[paths.index(slide)], False, f"{type(exc).__name__}: {exc}")
            results[slide] = outcome
            if on_result is not None:
                on_result(outcome)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [results[p] for p in paths]
