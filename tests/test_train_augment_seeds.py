"""Per-sample training augmentation keyed by the run seed and a per-draw seed from the trainer's sampler: the
same in any DataLoader worker or process, different for each sample and epoch, reproduced exactly by a
cancel + resume; validation samples are never augmented."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import load_config
from protoseg.data.augment import Augmentation, Compose, default_augmentation
from protoseg.data.datasets import PatchDataset
from protoseg.data.records import PatchRecord
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.models.classnet import ClassNet
from protoseg.models.factory import model_config
from protoseg.train.engine import LAST
from protoseg.train.events import EventKind, TrainEvent
from protoseg.train.stage1 import Stage1Trainer
from protoseg.train.stage2 import Stage2Trainer

torch.set_num_threads(1)
SIZE = 32
CLASSES = ClassSpec(names=("tumour", "stroma", "lymph"))


class Draw(Augmentation):
    """Puts its one random number into the sample: shows which draw each sample got."""

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        return {**sample, "draw": torch.rand(1, generator=generator, dtype=torch.float64)}


def _records(root: Path, n: int = 8) -> list[PatchRecord]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(n):
        rgb = (rng.uniform(0.3, 0.9, (SIZE, SIZE, 3)) * 255).astype(np.uint8)
        Image.fromarray(rgb).save(root / f"p{i}.png")
        records.append(PatchRecord(image=root / f"p{i}.png", name=f"p{i}", label=(1, int(i % 2), int(i % 3 == 0))))
    return records


def _cfg(out: Path, *overrides: str) -> Any:
    return load_config(
        None,
        [
            "model.backbone=test_convnext",  # timm's smallest four-stage model, random init
            "model.weights=null",
            "model.projector_hidden=16",
            "stage1.recipe=cam",
            "stage1.sampling=uniform",  # each patch once per epoch: the tests compare every sample's draw
            "stage1.epochs=3",
            "stage2.backbone=test_convnext",
            "stage2.weights=null",
            "stage2.decoder_dim=8",
            "stage2.epochs=3",
            f"data.patch_size={SIZE}",
            "data.batch_size=4",
            "data.num_workers=0",
            "data.augment_on_device=false",  # every augmentation per sample, in the dataset
            f"run.out_dir={out}",
            "run.device=cpu",
            "run.amp=false",
            "run.log_every=1000",
            *overrides,
        ],
    )


def _epoch(records: list[PatchRecord], tmp: Path, transform: Any, workers: int, epochs: int = 1) -> list[dict]:
    """Samples of ``epochs`` passes over the training loader of a stage-1 trainer, by name, one dict per epoch."""
    ds = PatchDataset(records, CLASSES, transform=transform, cache="none")
    cfg = _cfg(tmp, f"data.num_workers={workers}", "data.batch_size=2")
    loader = Stage1Trainer(cfg, ds, None, CLASSES)._loader()[0]
    out = []
    for _ in range(epochs):
        seen: dict[str, dict] = {}
        for batch in loader:
            for j, name in enumerate(batch["name"]):
                seen[name] = {k: v[j] for k, v in batch.items() if torch.is_tensor(v)}
        out.append(seen)
    return out


def test_two_workers_draw_differently_per_sample_and_like_no_workers(tmp_path: Path) -> None:
    records = _records(tmp_path / "data")
    two = _epoch(records, tmp_path / "a", Compose([Draw()], seed=0), workers=2, epochs=2)
    draws = [float(s["draw"]) for s in two[0].values()]
    assert len(two[0]) == 8 and len(set(draws)) == 8  # no two samples share a draw (workers included)
    assert all(float(two[0][k]["draw"]) != float(two[1][k]["draw"]) for k in two[0])  # new draws each epoch
    none = _epoch(records, tmp_path / "b", Compose([Draw()], seed=0), workers=0, epochs=2)
    assert all(float(none[e][k]["draw"]) == float(two[e][k]["draw"]) for e in range(2) for k in two[e])


def test_same_sample_and_seed_give_the_same_images_whatever_the_worker_count(tmp_path: Path) -> None:
    records = _records(tmp_path / "data")
    raw = {r.name: torch.from_numpy(np.array(Image.open(r.image))).permute(2, 0, 1).float() / 255 for r in records}
    two = _epoch(records, tmp_path / "a", default_augmentation(seed=0), workers=2)[0]
    none = _epoch(records, tmp_path / "b", default_augmentation(seed=0), workers=0)[0]
    assert two.keys() == none.keys() == raw.keys()
    assert all(torch.equal(two[k]["image"], none[k]["image"]) for k in raw)
    assert all(not torch.allclose(two[k]["image"], raw[k]) for k in raw)  # colour jitter always changes them


def test_a_keyed_sample_is_a_pure_function_of_its_key(tmp_path: Path) -> None:
    from protoseg.data.augment import SampleKey
    from protoseg.train.data_setup import subsample

    ds = PatchDataset(_records(tmp_path / "data"), CLASSES, transform=default_augmentation(seed=3), cache="none")
    a, b = ds[SampleKey(2, 11)], ds[SampleKey(2, 11)]
    assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], ds[SampleKey(2, 12)]["image"])  # another draw
    restored = pickle.loads(pickle.dumps(SampleKey(2, 11)))  # what a worker receives
    assert (int(restored), restored.seed) == (2, 11) and torch.equal(ds[restored]["image"], a["image"])
    sub = subsample(ds, 4, seed=0)  # data.max_train: the subset hands the seed on
    inner = sub.indices[1]  # type: ignore[attr-defined]
    assert torch.equal(sub[SampleKey(1, 11)]["image"], ds[SampleKey(inner, 11)]["image"])
    assert [s["name"] for s in sub.__getitems__([SampleKey(1, 5), 0])] == [f"p{inner}", f"p{sub.indices[0]}"]


def test_distributed_keys_cover_the_data_and_agree_across_ranks() -> None:
    from protoseg.train.sampling import KeyedDistributedSampler

    data = list(range(10))
    keys = {}
    for epoch in (0, 1):
        ranks = [KeyedDistributedSampler(data, num_replicas=2, rank=r, shuffle=True, seed=4) for r in (0, 1)]
        for s in ranks:
            s.set_epoch(epoch)
        keys[epoch] = [k for s in ranks for k in s]
        assert sorted(int(k) for k in keys[epoch]) == data  # each sample once, across the two ranks
        again = [k for s in ranks for k in s]
        assert [(int(k), k.seed) for k in again] == [(int(k), k.seed) for k in keys[epoch]]
    seeds = [{int(k): k.seed for k in keys[e]} for e in (0, 1)]
    assert len(set(seeds[0].values())) == 10 and all(seeds[0][i] != seeds[1][i] for i in data)


# ---- cancel + resume, stage 1 on augmented folder patches and stage 2 on augmented pseudo-masks -------------
class RecordingStage1(Stage1Trainer):
    """Stage 1 keeping a copy of every training batch's images as the loss sees them."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        self.seen.append(batch["image"].detach().clone())
        return super().training_loss(model, batch, step)


class RecordingStage2(Stage2Trainer):
    """Stage 2 keeping a copy of every training batch's images as the loss sees them."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        self.seen.append(batch["image"].detach().clone())
        return super().training_loss(model, batch, step)


def _pseudo_dir(records: list[PatchRecord], tmp: Path) -> Path:
    from protoseg.train.pseudo import export_pseudo_masks
    from protoseg.train.recipes import classnet_config

    cfg = _cfg(tmp)
    torch.manual_seed(0)
    net = ClassNet(classnet_config(cfg, CLASSES.num_classes, 1, 1))
    ckpt = Checkpoint(Stage.STAGE1, model_config(net), net.state_dict(), CLASSES, patch_size=SIZE)
    return export_pseudo_masks(ckpt, PatchDataset(records, CLASSES), tmp / "pseudo", cfg)


def _trainer(
    stage: str, records: list[PatchRecord], out: Path, pseudo: Path | None, workers: int = 0, **kw: Any
) -> Any:
    cfg = _cfg(out, f"data.num_workers={workers}")
    if stage == "stage1":
        ds = PatchDataset(records, CLASSES, transform=default_augmentation(seed=cfg.run.seed), cache="none")
        trainer = RecordingStage1(cfg, ds, None, CLASSES, **kw)
    else:
        from protoseg.train.pseudo import PseudoMaskDataset

        assert pseudo is not None
        ds = PseudoMaskDataset(PatchDataset(records, CLASSES), pseudo, augment=True, seed=cfg.run.seed)
        trainer = RecordingStage2(cfg, ds, None, CLASSES, **kw)
    trainer.seen = []
    return trainer


@pytest.mark.parametrize(("stage", "workers"), [("stage1", 0), ("stage2", 0), ("stage1", 2)])
def test_cancel_mid_epoch_and_resume_reproduces_the_augmented_run(tmp_path: Path, stage: str, workers: int) -> None:
    records = _records(tmp_path / "data")
    pseudo = _pseudo_dir(records, tmp_path) if stage == "stage2" else None
    full = _trainer(stage, records, tmp_path / "full", pseudo, workers)
    full.fit()
    token = CancelToken()

    def stop_mid_epoch_2(e: TrainEvent) -> None:
        if e.kind is EventKind.STEP and e.step == 3:
            token.cancel()

    part = _trainer(stage, records, tmp_path / "run", pseudo, workers, callbacks=[stop_mid_epoch_2], cancel=token)
    assert part.fit().cancelled
    torch.rand(100)  # a new process: global random states elsewhere
    resumed = _trainer(stage, records, tmp_path / "run", pseudo, workers)  # persistent workers: a new set
    res = resumed.fit(resume=True)
    assert res.steps_done == 6 and not res.cancelled and len(resumed.seen) == 4  # epoch 2 again, epoch 3
    assert all(torch.equal(x, y) for x, y in zip(resumed.seen, full.seen[2:]))  # the same augmented batches
    assert not torch.equal(full.seen[0], full.seen[2])  # and they are augmented anew each epoch
    a = load_checkpoint(tmp_path / "full" / stage / LAST).state_dict
    b = load_checkpoint(tmp_path / "run" / stage / LAST).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_pseudo_dataset_stain_flag_and_keyed_draws(tmp_path: Path) -> None:
    from protoseg.data.augment import ColorJitter, HEDJitter, SampleKey
    from protoseg.train.pseudo import PseudoMaskDataset

    records = _records(tmp_path / "data")
    pseudo = _pseudo_dir(records, tmp_path)
    with_stain = PseudoMaskDataset(PatchDataset(records, CLASSES), pseudo, augment=True, seed=0)
    light = PseudoMaskDataset(PatchDataset(records, CLASSES), pseudo, augment=True, seed=0, stain=False)
    assert [type(t) for t in with_stain.colour.transforms] == [ColorJitter, HEDJitter]  # type: ignore[union-attr]
    assert [type(t) for t in light.colour.transforms] == [ColorJitter]  # type: ignore[union-attr]
    a, b = with_stain[SampleKey(1, 7)], with_stain[SampleKey(1, 7)]
    assert all(torch.equal(a[k], b[k]) for k in ("image", "mask", "confidence"))
    assert torch.equal(light[SampleKey(1, 7)]["mask"], a["mask"])  # same geometry, only the colour differs
    assert not torch.equal(light[SampleKey(1, 7)]["image"], a["image"])


class KeyLog(Dataset):
    """Wraps a dataset and records the keys it is read with."""

    def __init__(self, inner: Dataset) -> None:
        self.inner, self.keys = inner, []

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]

    def __getitem__(self, key: int) -> dict:
        self.keys.append(key)
        return self.inner[key]


def test_validation_samples_are_read_unkeyed_and_unaugmented(tmp_path: Path) -> None:
    from protoseg.data.augment import SampleKey
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.train.pipeline import folder_data

    root = write_bcss_dataset(tmp_path / "bcss", n_train=4, n_val=2, n_test=1, size=SIZE)
    data = folder_data(_cfg(tmp_path / "run", f"data.root={root}", "stage1.epochs=1"))
    assert isinstance(data.train.transform, Compose) and data.val.transform is None  # type: ignore[union-attr]
    train, val = KeyLog(data.train), KeyLog(data.val)
    trainer = RecordingStage1(_cfg(tmp_path / "run", f"data.root={root}", "stage1.epochs=1"), train, val, data.classes)
    trainer.seen = []
    res = trainer.fit()
    assert res.best_metric is not None  # validation ran
    assert train.keys and all(isinstance(k, SampleKey) for k in train.keys)  # training: keyed draws
    assert val.keys and not any(isinstance(k, SampleKey) for k in val.keys)  # validation: plain indices
