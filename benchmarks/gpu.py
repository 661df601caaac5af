"""Accelerator benchmark: slide inference (model only vs whole pipeline) and stage-1 training throughput.

For each backbone (resnet18, pvt_v2_b1; random init, no download): model-only tiles/s on pre-read
tiles (scores left on the device), pipeline tiles/s of ``predict_slide_to_omezarr`` counting each
slide tile once, their ratio, the decode / compute / blend+write time split and peak device memory.
For each stage-1 recipe (CAM, PBIP, LPD) on synthetic 224-px patches: images/s of the default data
path alone (DataLoader with the machine's default workers, decoded-patch cache, float32 stain
augmentation; first and second epoch) and of the model step alone (forward + backward + AdamW on one
resident batch). The CPU figures are always measured; the GPU ones only where CUDA exists.

``--augment``: stain jitter per image in the dataset (``data.augment_on_device=false``) against batched on
the training device in the trainer step (the default), interleaved, median of ``--augment-repeats``: the
jitter alone, the data path alone (loader + copy to the device + device jitter) and a whole training step
(that plus a CAM ResNet-18 forward/backward/AdamW), in images/s.

    python benchmarks/gpu.py [--size 2048] [--batch-size N] [--train-images 64] [--quick] [--augment]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from infer_common import make_checkpoint, make_slide

BACKBONES = ("resnet18", "pvt_v2_b1")
RECIPES = ("cam", "pbip", "lpd")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def timed_calls(owner: object, name: str, acc: list[float]) -> Iterator[None]:
    """Add the wall time of every ``owner.name(...)`` call to ``acc[0]`` while the block runs."""
    real = getattr(owner, name)

    def wrapper(*a: object, **kw: object) -> object:
        t0 = time.perf_counter()
        try:
            return real(*a, **kw)
        finally:
            acc[0] += time.perf_counter() - t0

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def inference(backbone: str, device: torch.device, args: argparse.Namespace, tmp: Path, slide: Path) -> None:
    from protoseg.infer import batch as batch_mod
    from protoseg.infer.chunks import SlideChunks
    from protoseg.infer.predictor import Predictor
    from protoseg.infer.tile_pipeline import default_readers
    from protoseg.slide import open_slide

    ckpt = make_checkpoint(tmp, backbone)
    kw = {"batch_size": args.batch_size} if args.batch_size else {}
    predictor = Predictor(ckpt, device=str(device), amp=True, compile=args.compile, **kw)
    geom = predictor.geometry(open_slide(slide))
    t = predictor.tile_size
    n_grid = int(np.prod(geom.grid.shape))
    idx = list(np.ndindex(*geom.grid.shape))[: args.model_tiles]
    t0 = time.perf_counter()
    tiles = np.stack([geom.reader.read((*geom.grid.origin(i), t, t)) for i in idx])
    decode_ms = 1e3 * (time.perf_counter() - t0) / len(tiles)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def model_rate() -> float:
        predictor.predict_tiles_device(tiles[: predictor.batch_size])  # warm-up (and compile)
        sync(device)
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            predictor.predict_tiles_device(tiles)
        sync(device)
        return args.repeats * len(tiles) / (time.perf_counter() - t0)

    before = model_rate()
    finish, write = [0.0], [0.0]
    with timed_calls(SlideChunks, "finish", finish), timed_calls(batch_mod._Arrays, "write", write):
        t0 = time.perf_counter()
        res = batch_mod.predict_slide_to_omezarr(
            predictor, slide, tmp / f"{backbone}-{device.type}.zarr", tissue_only=False, overwrite=True
        )
        sync(device)
        seconds = time.perf_counter() - t0
    after = model_rate()  # before and after: other load on the machine drifts
    model = (before + after) / 2
    pipe = n_grid / seconds
    peak = (
        f", peak device memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
        if device.type == "cuda"
        else ""
    )
    print(
        f"  {backbone:10s} {device.type}: model only {model:8.1f} tiles/s (before {before:.1f}, after {after:.1f}); "
        f"pipeline {pipe:8.1f} tiles/s ({n_grid} slide tiles once, {res.tiles_predicted} computed, "
        f"{seconds:.1f} s); pipeline/model {pipe / model:.3f}{peak}"
    )
    print(
        f"  {'':10s} split per tile: decode {decode_ms:.2f} ms (one reader thread), compute {1e3 / model:.2f} ms, "
        f"blend+quantise {1e3 * (finish[0] - write[0]) / n_grid:.2f} ms, zarr write {1e3 * write[0] / n_grid:.2f} ms "
        f"(writer thread, off the model loop); batch {predictor.batch_size}, readers "
        f"{default_readers(device.type)}, amp {predictor.amp_dtype if device.type == 'cuda' else 'off'}, "
        f"channels_last {predictor.channels_last}, device blend {predictor.device_blend}"
    )


def training(recipe: str, device: torch.device, args: argparse.Namespace, data_root: Path, tmp: Path) -> None:
    from protoseg.config import load_config
    from protoseg.train.bank_setup import bank_and_encoder, with_default_bank
    from protoseg.train.data_setup import folder_data
    from protoseg.train.stage1 import Stage1Trainer

    cfg = load_config(
        None,
        [
            f"data.root={data_root}",
            "data.patch_size=224",
            f"data.batch_size={args.train_batch}",
            "model.backbone=resnet18",
            "model.weights=null",
            f"stage1.recipe={recipe}",
            "bank.n_per_cluster=8",
            f"run.device={device.type}",
            f"run.out_dir={tmp / recipe}",
            "run.log_every=100000",
        ],
    )
    data = folder_data(cfg)
    cfg = with_default_bank(replace(cfg, run=replace(cfg.run, mpp=data.mpp)))
    bank, encoder = bank_and_encoder(cfg, data)
    trainer = Stage1Trainer(cfg, data.train, None, data.classes, bank=bank, encoder=encoder)
    loader, _ = trainer._loader()
    rates = []
    for _epoch in range(2):  # first epoch decodes the PNGs, the second reads the decoded-patch cache
        t0 = time.perf_counter()
        n = sum(len(b["image"]) for b in loader)
        rates.append(n / (time.perf_counter() - t0))
    net = trainer.net.to(device).train()
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    batch = next(iter(loader))
    batch = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in batch.items()}
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def step(i: int) -> None:
        with amp:
            loss, _ = trainer.training_loss(net, batch, i)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step(0)
    sync(device)
    t0 = time.perf_counter()
    for i in range(args.train_steps):
        step(i + 1)
    sync(device)
    model_rate = args.train_steps * len(batch["image"]) / (time.perf_counter() - t0)
    print(
        f"  {recipe:5s} {device.type}: data path alone {rates[0]:7.1f} images/s (epoch 1, decoding), "
        f"{rates[1]:7.1f} images/s (epoch 2, cached; {loader.num_workers} workers, pin_memory "
        f"{loader.pin_memory}); model step alone {model_rate:7.1f} images/s (batch {len(batch['image'])})"
    )


def augment_paths(device: torch.device, args: argparse.Namespace, data_root: Path, tmp: Path) -> None:
    """Per-image stain jitter in the dataset vs batched on the device: jitter, data path and training step."""
    from protoseg.config import load_config
    from protoseg.data.augment import HEDJitter
    from protoseg.train.pipeline import folder_data
    from protoseg.train.stage1 import Stage1Trainer

    modes = {}
    for name, on_device in (("per-image", False), ("device", True)):
        sets = [f"data.root={data_root}", "data.patch_size=224", f"data.batch_size={args.train_batch}"]
        sets += ["model.backbone=resnet18", "model.weights=null", "stage1.recipe=cam", f"run.device={device.type}"]
        sets += [f"run.out_dir={tmp / name}", f"data.augment_on_device={str(on_device).lower()}"]
        cfg = load_config(None, sets)
        data = folder_data(cfg)
        trainer = Stage1Trainer(cfg, data.train, None, data.classes)
        modes[name] = (trainer, trainer._loader()[0])
    net = modes["per-image"][0].net.to(device).train()  # one network: the model step is the same in both modes
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    def run(name: str, steps: int, train: bool) -> float:
        trainer, loader = modes[name]
        sync(device)
        t0, n = time.perf_counter(), 0
        for i, batch in enumerate(loader):
            if i == steps:
                break
            batch = {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in batch.items()}
            if trainer.batch_augment is not None:
                batch = trainer.batch_augment(batch)
            if train:
                with amp:
                    loss, _ = trainer.training_loss(net, batch, i)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            n += len(batch["image"])
        sync(device)
        return n / (time.perf_counter() - t0)

    images = torch.rand(args.train_batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(device)
    jit, g = HEDJitter(), torch.Generator().manual_seed(0)

    def jitter(name: str) -> float:
        seconds = []
        for _ in range(5):  # cheap: the median of 5 calls per repeat
            sync(device)
            t0 = time.perf_counter()
            if name == "device":
                jit.apply_batch(images, g)
            else:
                for im in images.cpu():  # the dataset path: one CPU image at a time
                    jit({"image": im}, g)
            sync(device)
            seconds.append(time.perf_counter() - t0)
        return len(images) / statistics.median(seconds)

    for name in modes:  # warm-up: decoded-patch cache filled, kernels loaded, for both modes alike
        run(name, 10**6, False), run(name, 1, True), jitter(name)
    rates: dict[tuple[str, str], list[float]] = {}
    for _ in range(args.augment_repeats):
        for name in modes:  # interleaved: drift on the shared machine hits both modes alike
            rates.setdefault(("jitter", name), []).append(jitter(name))
            rates.setdefault(("data", name), []).append(run(name, 10**6, False))
            rates.setdefault(("step", name), []).append(run(name, args.augment_steps, True))
    for what, label in (("jitter", "stain jitter alone"), ("data", "data path alone"), ("step", "training step")):
        a, b = (statistics.median(rates[(what, m)]) for m in modes)
        rate = f"per-image {a:8.1f} images/s, device-batched {b:8.1f} images/s ({b / a:.2f}x)"
        print(f"  {label:18s} {device.type}: {rate}")
    print(
        f"  ({args.augment_repeats} interleaved repeats, medians; batch {args.train_batch}, "
        f"{modes['device'][1].num_workers} loader workers; step = {args.augment_steps} batches from the loader)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=0, help="slide side (default 12288 on CUDA, 1536 on CPU)")
    ap.add_argument("--batch-size", type=int, default=0, help="inference batch (default: chosen for the device)")
    ap.add_argument("--model-tiles", type=int, default=0, help="pre-read tiles for model-only (default 2048 / 96)")
    ap.add_argument("--repeats", type=int, default=0)
    ap.add_argument(
        "--compile",
        nargs="?",
        const="default",
        default=False,
        choices=("default", "reduce-overhead", "max-autotune"),
        help="torch.compile the model (CUDA); reduce-overhead = CUDA graphs",
    )
    ap.add_argument("--train-images", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=0)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one backbone, one recipe (smoke run)")
    ap.add_argument("--augment", action="store_true", help="only the per-image vs device stain jitter comparison")
    ap.add_argument("--augment-repeats", type=int, default=5)
    ap.add_argument("--augment-steps", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    cuda = torch.cuda.is_available()
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if cuda else [])
    backbones = BACKBONES[:1] if args.quick else BACKBONES
    recipes = RECIPES[:1] if args.quick else RECIPES
    print(
        f"machine: {os.cpu_count()} CPU cores, torch threads {torch.get_num_threads()}, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if cuda else 'no CUDA GPU'}; torch {torch.__version__}"
    )
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for device in devices:
            on_gpu = device.type == "cuda"
            a = argparse.Namespace(**vars(args))
            a.size = args.size or (12288 if on_gpu else 1536)
            a.model_tiles = args.model_tiles or (2048 if on_gpu else 96)
            a.repeats = args.repeats or (3 if on_gpu else 1)
            a.train_steps = args.train_steps or (20 if on_gpu else 3)
            if not args.augment:
                slide = make_slide(tmp, a.size)
                where = f"slide {a.size}x{a.size} px (0.5 um/px, 224-px tiles, overlap 56)"
                print(f"\ninference on {device.type}, {where}:")
                for backbone in backbones:
                    inference(backbone, device, a, tmp, slide)
                slide.unlink()
            if args.skip_train:
                continue
            from protoseg.data.synthetic.writers import write_bcss_dataset

            root = tmp / "data"
            if not root.exists():
                write_bcss_dataset(root, n_train=args.train_images, n_val=4, n_test=4, size=224)
            if args.augment:
                print(f"\nstain jitter per image vs batched on the device ({device.type}, {args.train_images} images):")
                augment_paths(device, a, root, tmp / device.type / "augment")
                continue
            print(f"\nstage-1 training on {device.type}, 224-px patches, {args.train_images} images:")
            for recipe in recipes:
                training(recipe, device, a, root, tmp / device.type)
    if not cuda:
        print("\nCUDA not available on this machine: GPU figures skipped (CPU figures above).")


if __name__ == "__main__":
    main()
