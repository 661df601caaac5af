"""The threads of a whole-slide run: reader threads decode tiles, the calling thread batches them through
the model, and finished chunks go to writer threads beside it or (``writers=0``, the CPU default) to a pool
between batches; the first error stops everything.

Batches are cut from consecutive job ids, so a slide's batches (and so its bytes) never depend on thread
timing. ``batch.predict_slide_to_omezarr`` supplies the plan and what finishing a chunk means.
"""

from __future__ import annotations

import os
import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np

from protoseg.cancel import CancelLike, check_cancelled
from protoseg.infer.chunks import SlideChunks
from protoseg.infer.plan import ChunkStep

_DONE = object()


def default_readers(device_type: str) -> int:
    """Decode threads: 2 when the model shares the CPU; on an accelerator all cores but two (2..16).

    openslide, tifffile (imagecodecs) and numpy release the GIL while decoding and resampling, so
    threads scale with cores without the pickling cost of processes.
    """
    cores = os.cpu_count() or 2
    return 2 if device_type == "cpu" else max(2, min(16, cores - 2))


def default_writers(device_type: str) -> int:
    """Blend + zarr-write threads beside the model: none when it shares the CPU (chunks are finished between
    batches on all of the model's threads: a writer thread beside it preempts one of the model's threads,
    which stalls the others at the next barrier); on an accelerator a few (2..4), so blending and
    compressing chunks never holds the model loop back."""
    cores = os.cpu_count() or 2
    return 0 if device_type == "cpu" else max(2, min(4, cores // 4))


def finish_threads() -> int:
    """Threads that finish chunks between batches (``writers=0``): as many as the model's CPU threads."""
    import torch

    return max(1, min(32, torch.get_num_threads()))


class TilePipeline:
    """Readers -> model -> writers over a stream of ``ChunkStep``s; first error stops everything.

    ``finish_chunk(step, tiles[, pool, parts])`` runs in ``writers`` threads at once, or (``writers=0``)
    between batches on a pool, whose threads it may also use to blend one chunk in ``parts`` bands (each
    chunk is its own zarr chunk; the caller serialises its shared bookkeeping)."""

    def __init__(
        self,
        layout: SlideChunks,
        steps,
        finish_chunk: Callable[..., None],
        readers: int | None,
        cancel: CancelLike | None = None,
        writers: int | None = None,
    ) -> None:
        self.layout, self.finish_chunk, self.cancel = layout, finish_chunk, cancel
        self.predictor = layout.predictor
        self._steps = steps
        self._plan_lock = threading.Lock()
        self._pending_jobs: deque = deque()
        self._ready_steps: deque[ChunkStep] = deque()
        self._plan_done = False
        self.n_readers = max(1, int(readers if readers is not None else default_readers(self.predictor.device.type)))
        self.n_writers = int(writers if writers is not None else default_writers(self.predictor.device.type))
        bs = self.predictor.batch_size
        self.read_q: queue.Queue = queue.Queue(maxsize=max(4, 2 * bs))
        # absorbs zarr write hiccups off the model loop
        self.write_q: queue.Queue = queue.Queue(maxsize=4 + 4 * self.n_writers)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self._pool: ThreadPoolExecutor | None = None  # writers=0: finishes chunks between batches
        self._pool_threads = 1

    def _next_job(self):
        with self._plan_lock:
            while not self._pending_jobs and not self._plan_done:
                try:
                    step = next(self._steps)
                except StopIteration:
                    self._plan_done = True
                    break
                self._ready_steps.append(step)
                self._pending_jobs.extend(step.new_jobs)
            return self._pending_jobs.popleft() if self._pending_jobs else None

    def _put(self, q: queue.Queue, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.stop.set()

    def _reader(self) -> None:
        t, geom = self.predictor.tile_size, self.layout.geom
        try:
            while not self.stop.is_set():
                job = self._next_job()
                if job is None:
                    break
                job_id, index = job
                if not self._put(self.read_q, (job_id, geom.reader.read((*geom.grid.origin(index), t, t)))):
                    return
        except BaseException as exc:  # noqa: BLE001 - forwarded to the calling thread
            self._fail(exc)
        finally:
            self._put(self.read_q, _DONE)

    def _writer(self) -> None:
        try:
            while True:
                try:
                    item = self.write_q.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():
                        return
                    continue
                if item is _DONE or self.stop.is_set():
                    return
                self.finish_chunk(*item)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _dispatch(self, store: dict[int, np.ndarray]) -> None:
        """Hand the chunks whose tiles are all predicted to the writers, or (``writers=0``) finish them now."""
        ready: list[tuple[ChunkStep, dict]] = []
        while True:
            with self._plan_lock:
                if not self._ready_steps or any(j not in store for j in self._ready_steps[0].jobs):
                    break
                step = self._ready_steps.popleft()
            tiles = {t: store[j] for t, j in zip(step.tiles, step.jobs)}
            for j in step.release:
                store.pop(j, None)
            if not self.n_writers:
                ready.append((step, tiles))
            elif not self._put(self.write_q, (step, tiles)):
                return
        self._finish_between_batches(ready)

    def _finish_between_batches(self, ready: list[tuple[ChunkStep, dict]]) -> None:
        """Finish chunks while the model waits, every one done (or failed) on return: several at once on the
        pool, or a lone chunk in the model's thread, blended in bands on the pool."""
        if self._pool is None or len(ready) == 1:
            for step, tiles in ready:
                self.finish_chunk(step, tiles, self._pool, self._pool_threads)
            return
        futures = [self._pool.submit(self.finish_chunk, step, tiles) for step, tiles in ready]
        wait(futures)
        for f in futures:
            f.result()  # the first failure, in chunk order

    def run(self) -> None:
        threads = [
            threading.Thread(target=self._reader, name=f"protoseg-read-{i}", daemon=True) for i in range(self.n_readers)
        ]
        writers = [
            threading.Thread(target=self._writer, name=f"protoseg-write-{i}", daemon=True)
            for i in range(self.n_writers)
        ]
        self._pool_threads = finish_threads() if not self.n_writers else 1
        if self._pool_threads > 1:
            self._pool = ThreadPoolExecutor(self._pool_threads, thread_name_prefix="protoseg-finish")
        for th in (*threads, *writers):
            th.start()
        store: dict[int, np.ndarray] = {}
        # tiles arrive in reader order; batches are cut from consecutive job ids so that a slide's
        # batches (and so its bytes) never depend on thread timing: same input, same output
        arrived: dict[int, np.ndarray] = {}
        finished, next_id, bs = 0, 0, self.predictor.batch_size
        try:
            while finished < self.n_readers and not self.stop.is_set():
                check_cancelled(self.cancel, "whole-slide prediction")
                try:
                    item = self.read_q.get(timeout=0.1)
                except queue.Empty:
                    continue
                if item is _DONE:
                    finished += 1
                else:
                    arrived[item[0]] = item[1]
                while True:
                    run = 0
                    while next_id + run in arrived and run < bs:
                        run += 1
                    if run == 0 or (run < bs and finished < self.n_readers):
                        break
                    ids = range(next_id, next_id + run)
                    probs = self.predictor.predict_for_blend(np.stack([arrived.pop(j) for j in ids]))
                    store.update(zip(ids, probs))
                    next_id += run
                    self._dispatch(store)
            self._dispatch(store)
        except BaseException as exc:  # noqa: BLE001 - any failure (or Cancelled) stops the threads, then re-raised
            self._fail(exc)
        finally:
            if self.error is None:
                for _ in writers:
                    self._put(self.write_q, _DONE)
                for th in writers:
                    th.join()
            self.stop.set()
            if self._pool is not None:
                self._pool.shutdown(wait=True, cancel_futures=True)
                self._pool = None
            for th in (*threads, *writers):
                th.join(timeout=5)
        if self.error is not None:
            raise self.error
        if self._ready_steps:
            raise RuntimeError(f"{len(self._ready_steps)} chunks left unfinished (internal pipeline error)")
