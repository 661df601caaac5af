"""Training data path: decoded-patch cache (memory / shared memory-mapped file), float32 stain
augmentation (and batched on the device), DataLoader worker defaults from the machine."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import protoseg.data.datasets as datasets
from protoseg.classes import ClassSpec
from protoseg.data.augment import HEDJitter, hed_to_rgb, rgb_to_hed
from protoseg.data.cache import CacheMode, DecodedCache, sweep_stale_scratch
from protoseg.data.datasets import PatchDataset
from protoseg.data.records import PatchRecord
from protoseg.runtime import default_num_workers, resolve_num_workers

CLASSES = ClassSpec(("A", "B"), colors=((255, 0, 0), (0, 255, 0)))


def _dataset(tmp_path, cache, n=4):
    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        p = tmp_path / f"p{i}.png"
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(p)
        recs.append(PatchRecord(image=p, name=p.stem, label=(1, 0)))
    return PatchDataset(recs, CLASSES, cache=cache)


@pytest.mark.parametrize("mode", [CacheMode.MMAP, CacheMode.MEMORY])
def test_each_patch_is_decoded_once(tmp_path, monkeypatch, mode) -> None:
    ds = _dataset(tmp_path, mode)
    decoded: list[str] = []
    real = datasets.load_image
    monkeypatch.setattr(datasets, "load_image", lambda p: decoded.append(str(p)) or real(p))
    first = [ds[i]["image"] for i in range(4)]
    second = [ds[i]["image"] for i in range(4)]
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a, b)
    assert len(decoded) == (3 if mode is CacheMode.MMAP else 4)  # mmap decoded patch 0 when it was built
    ds[1]["image"].zero_()  # callers may modify their sample: the cache keeps its own copy
    assert torch.equal(ds[1]["image"], second[1])


def test_mmap_cache_is_shared_with_worker_copies(tmp_path, monkeypatch) -> None:
    ds = _dataset(tmp_path, CacheMode.MMAP)
    worker = pickle.loads(pickle.dumps(ds))  # what a spawned DataLoader worker receives
    assert worker._cache._data is not None and ds._cache._data is not None
    worker[2]  # decoded in the "worker" ...
    monkeypatch.setattr(datasets, "load_image", lambda p: pytest.fail(f"decoded {p} again"))
    assert torch.equal(ds[2]["image"], worker[2]["image"])  # ... read by the parent without decoding
    assert len(pickle.dumps(ds)) < 20_000  # pixels travel as a file path, not in the pickle


def test_cache_skips_other_shapes_and_respects_the_bound() -> None:
    cache = DecodedCache(3, CacheMode.MMAP, max_bytes=10_000)
    cache.put(0, np.ones((10, 10, 3), np.uint8))
    cache.put(1, np.ones((11, 10, 3), np.uint8))  # another size: not cached
    assert cache.get(0) is not None and cache.get(1) is None
    tiny = DecodedCache(3, CacheMode.MMAP, max_bytes=100)
    tiny.put(0, np.ones((10, 10, 3), np.uint8))
    assert tiny.mode is CacheMode.NONE and tiny.get(0) is None


def test_float32_stain_jitter_matches_float64_and_batches() -> None:
    img = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.9 + 0.05
    assert rgb_to_hed(img).dtype == torch.float32
    torch.testing.assert_close(rgb_to_hed(img), rgb_to_hed(img.double()).float(), atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(hed_to_rgb(rgb_to_hed(img)), img, atol=2e-5, rtol=0)
    jit = HEDJitter(0.05, 0.05)
    a = jit({"image": img}, torch.Generator().manual_seed(1))["image"]
    b = jit({"image": img.double()}, torch.Generator().manual_seed(1))["image"]
    torch.testing.assert_close(a, b.float(), atol=1e-4, rtol=0)
    batch = torch.stack([img, img.flip(-1)])
    out = jit.apply_batch(batch, torch.Generator().manual_seed(2))
    assert out.shape == batch.shape and out.dtype == torch.float32 and 0 <= out.min() and out.max() <= 1
    assert not torch.equal(out[0], batch[0])


def test_num_workers_defaults_from_the_machine(monkeypatch) -> None:
    import os

    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(2)), raising=False)
    assert default_num_workers("cpu") == 0 and default_num_workers("cuda") == 0  # 2 cores: keep them for the model
    monkeypatch.setattr(os, "sched_getaffinity", lambda _pid: set(range(16)), raising=False)
    assert default_num_workers("cuda") == 8 and default_num_workers("cpu") == 4
    assert default_num_workers("cuda", world_size=4) == 3  # torchrun: the cores are shared by the ranks
    assert resolve_num_workers(None, "cuda") == 8 and resolve_num_workers(0, "cuda") == 0


def test_scratch_left_by_a_killed_run_is_swept_and_a_live_one_kept(tmp_path: Path, monkeypatch) -> None:
    """A cancelled training child is killed before its finalizer runs: the next cache deletes its folder,
    never one of a live process, of another machine, or named otherwise."""
    import socket
    import tempfile

    host = "".join(ch if ch.isalnum() else "_" for ch in socket.gethostname())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f"protoseg-patches-{dead_pid}-{host}-abc"
    live = tmp_path / f"protoseg-patches-{os.getpid()}-{host}-def"
    elsewhere = tmp_path / f"protoseg-patches-{dead_pid}-otherhost-ghi"  # another machine's run: not judged
    other = tmp_path / "protoseg-patchesXY"  # not our naming: never touched
    for folder in (stale, live, elsewhere, other):
        folder.mkdir()
        (folder / "pixels.npy").write_bytes(b"x")
    assert sweep_stale_scratch(str(tmp_path)) == 1
    assert not stale.exists() and live.exists() and elsewhere.exists() and other.exists()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the cache's own folder carries pid and host
    cache = DecodedCache(2, CacheMode.MMAP, max_bytes=10_000)
    cache.put(0, np.ones((4, 4, 3), np.uint8))
    assert Path(cache._dir).name.startswith(f"protoseg-patches-{os.getpid()}-{host}-")
