"""Latency of lazy prediction chunks (what napari waits for): cold (model runs) vs warm (LRU cache).

Run: ``python benchmarks/infer_lazy.py``. Prints the median cold latency of level-0 chunks, the
cold latency of a neighbouring chunk (tiles shared through the cache), and warm latency.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_common import make_checkpoint, make_slide, threads
from protoseg.infer.lazy import LazyPrediction
from protoseg.infer.predictor import Predictor


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(threads())
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        slide = make_slide(tmp, 1536)
        predictor = Predictor(make_checkpoint(tmp, "resnet18"), device="cpu", batch_size=16)
        predictor.predict_tiles(__import__("numpy").zeros((2, 224, 224, 3), "uint8"))
        lazy = LazyPrediction(predictor, str(slide), chunk=256)
        mask = lazy.mask(0)
        cold_first = timed(lambda: mask[0:256, 0:256].compute())
        cold_neighbour = timed(lambda: mask[0:256, 256:512].compute())
        warm = statistics.median(timed(lambda: mask[0:256, 0:256].compute()) for _ in range(20))
        warm_other = statistics.median(timed(lambda: lazy.probs(0)[1, 0:256, 256:512].compute()) for _ in range(20))
        print(f"chunk 256 px, tiles {predictor.tile_size} px overlap {predictor.overlap}")
        print(f"cold chunk            : {cold_first * 1e3:9.1f} ms")
        print(f"cold neighbour chunk  : {cold_neighbour * 1e3:9.1f} ms (shares tiles via the cache)")
        print(f"warm chunk (mask)     : {warm * 1e3:9.2f} ms")
        print(f"warm chunk (one class): {warm_other * 1e3:9.2f} ms")
        print(f"cold/warm ratio       : {cold_first / warm:9.0f}x; cache {lazy.cache.bytes / 2**20:.1f} MB")


if __name__ == "__main__":
    main()
