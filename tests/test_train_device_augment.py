"""Stain jitter batched in the trainer step (``data.augment_on_device``): applied to training batches only,
seeded by the run seed, part of the resumable run state, and off the dataset's per-sample transform."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ConfigError, config_from_dict, load_config, to_dict
from protoseg.data.augment import ColorJitter, HEDJitter, RandomFlip, RandomRot90
from protoseg.data.records import Split
from protoseg.models.checkpoint import load_checkpoint
from protoseg.train.device_augment import BatchStainJitter, batch_augment_for, stain_on_device
from protoseg.train.engine import LAST
from protoseg.train.events import EventKind, TrainEvent
from protoseg.train.pipeline import open_split
from protoseg.train.runstate import capture_rng, restore_rng
from protoseg.train.stage2 import Stage2Trainer

torch.set_num_threads(1)
SIZE = 32
CLASSES = ClassSpec(names=("tumour", "stroma", "lymph"))


class Patches(Dataset):
    """Eight in-memory stage-2 samples (H&E-ish colours, pseudo-masks, confidence), no transform."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = (0.55 + 0.35 * torch.rand(n, 3, SIZE, SIZE, generator=g)).clamp(0, 1)
        self.masks = torch.randint(0, CLASSES.num_classes + 1, (n, SIZE, SIZE), generator=g)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "mask": self.masks[i], "confidence": torch.ones(SIZE, SIZE)}


class Recording(Stage2Trainer):
    """Stage 2 that keeps a copy of every training batch's images as the loss sees them."""

    def training_loss(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        self.seen.append(batch["image"].detach().clone())
        return super().training_loss(model, batch, step)


def _cfg(out: Path, *overrides: str) -> Any:
    return load_config(
        None,
        [
            "stage2.backbone=test_convnext",
            "stage2.weights=null",
            "stage2.decoder_dim=8",
            "stage2.epochs=3",
            f"data.patch_size={SIZE}",
            "data.batch_size=4",
            "data.num_workers=0",
            f"run.out_dir={out}",
            "run.device=cpu",
            "run.amp=false",
            "run.log_every=1000",
            *overrides,
        ],
    )


def _trainer(out: Path, *overrides: str, **kw: Any) -> Recording:
    trainer = Recording(_cfg(out, *overrides), Patches(), None, CLASSES, **kw)
    trainer.seen = []
    return trainer


def _nearest_raw(image: torch.Tensor, raw: torch.Tensor) -> float:
    return float((raw - image).abs().amax(dim=(1, 2, 3)).min())


def test_config_switch_defaults_on_and_overrides_like_other_keys(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    assert cfg.data.augment and cfg.data.augment_on_device and stain_on_device(cfg)
    assert not stain_on_device(_cfg(tmp_path, "data.augment_on_device=false"))
    assert not stain_on_device(_cfg(tmp_path, "data.augment=false"))  # no augmentation at all
    assert batch_augment_for(_cfg(tmp_path, "data.augment=false"), 0) is None
    with pytest.raises(ConfigError, match="augment_on_device"):
        _cfg(tmp_path, "data.augment_on_device=sometimes")
    old = to_dict(cfg)
    del old["data"]["augment_on_device"]  # a config written before the key existed
    assert config_from_dict(old).data.augment_on_device is True


def test_the_step_jitters_each_batch_reproducibly_from_the_run_seed(tmp_path: Path) -> None:
    raw = Patches().images
    a = _trainer(tmp_path / "a", "stage2.epochs=2")
    assert isinstance(a.batch_augment, BatchStainJitter)
    a.fit()
    b = _trainer(tmp_path / "b", "stage2.epochs=2")
    b.fit()
    assert len(a.seen) == 4 and all(torch.equal(x, y) for x, y in zip(a.seen, b.seen))  # same seed, same batches
    for batch in a.seen:
        for image in batch:
            assert 1e-3 < _nearest_raw(image, raw) < 0.25  # a jittered dataset image
    other = _trainer(tmp_path / "c", "stage2.epochs=2", "run.seed=1")
    other.fit()
    assert not any(torch.equal(x, y) for x, y in zip(a.seen, other.seen))
    off = _trainer(tmp_path / "d", "stage2.epochs=2", "data.augment_on_device=false")
    assert off.batch_augment is None
    off.fit()
    assert all(_nearest_raw(image, raw) == 0 for batch in off.seen for image in batch)  # untouched


class Counting(BatchStainJitter):
    """The trainer's jitter, counting the batches it sees."""

    def __init__(self) -> None:
        super().__init__(seed=0)
        self.calls = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        return super().__call__(batch)


def test_validation_is_never_jittered(tmp_path: Path) -> None:
    trainer = Recording(_cfg(tmp_path, "stage2.epochs=1"), Patches(), Patches(4), CLASSES)
    trainer.seen, trainer.batch_augment = [], Counting()
    res = trainer.fit()
    assert res.best is not None and res.best_metric is not None  # validation ran
    assert trainer.batch_augment.calls == res.steps_done == len(trainer.seen) == 2


def test_resume_after_cancel_reproduces_the_uncancelled_run(tmp_path: Path) -> None:
    full = _trainer(tmp_path / "full")
    full.fit()
    token = CancelToken()

    def stop_mid_epoch_2(e: TrainEvent) -> None:
        if e.kind is EventKind.STEP and e.step == 3:
            token.cancel()

    part = _trainer(tmp_path / "run", callbacks=[stop_mid_epoch_2], cancel=token)
    assert part.fit().cancelled
    assert "augment" in load_checkpoint(tmp_path / "run" / "stage2" / LAST).extra["rng"]
    torch.rand(100)  # a new process: global random states elsewhere
    resumed = _trainer(tmp_path / "run")
    res = resumed.fit(resume=True)
    assert res.steps_done == 6 and not res.cancelled
    assert len(resumed.seen) == 4  # epoch 2 again (from its start) and epoch 3
    assert all(torch.equal(x, y) for x, y in zip(resumed.seen, full.seen[2:]))  # the same jittered batches
    a = load_checkpoint(tmp_path / "full" / "stage2" / LAST).state_dict
    b = load_checkpoint(tmp_path / "run" / "stage2" / LAST).state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_state_keeps_the_augmentation_generator() -> None:
    data, aug = torch.Generator().manual_seed(1), BatchStainJitter(5).generator
    state = capture_rng(data, aug)
    expected = torch.rand(4, generator=aug)
    restore_rng(state, data, aug)
    assert torch.equal(torch.rand(4, generator=aug), expected)
    older = {k: v for k, v in state.items() if k != "augment"}  # a checkpoint of a run without it
    restore_rng(older, data, aug)  # leaves the generator where it is
    assert not torch.equal(torch.rand(4, generator=aug), expected)
    assert not torch.equal(BatchStainJitter(5).generator.get_state(), BatchStainJitter(6).generator.get_state())
    fresh = torch.Generator().manual_seed(5)  # not the data-order stream of the same seed
    assert not torch.equal(torch.rand(4, generator=BatchStainJitter(5).generator), torch.rand(4, generator=fresh))


@pytest.mark.parametrize(("on_device", "expected"), [(True, 3), (False, 4)])
def test_the_dataset_transform_keeps_the_cheap_parts(tmp_path: Path, on_device: bool, expected: int) -> None:
    from protoseg.data.synthetic.writers import write_bcss_dataset

    root = write_bcss_dataset(tmp_path / "data", n_train=2, n_val=1, n_test=1, size=32)
    cfg = _cfg(tmp_path, f"data.root={root}", f"data.augment_on_device={str(on_device).lower()}")
    train = open_split(cfg, Split.TRAIN, augment=True)
    kinds = [type(t) for t in train.transform.transforms]  # type: ignore[union-attr]
    assert kinds == [RandomFlip, RandomRot90, ColorJitter, HEDJitter][:expected]
    assert open_split(cfg, Split.VAL).transform is None  # validation: never augmented


def test_negative_run_seeds_work_like_others() -> None:
    import torch

    from protoseg.train.device_augment import BatchStainJitter

    images = torch.rand(4, 3, 16, 16)
    a = BatchStainJitter(-1)({"image": images})["image"]
    b = BatchStainJitter(-1)({"image": images})["image"]
    c = BatchStainJitter(1)({"image": images})["image"]
    assert torch.equal(a, b) and not torch.equal(a, c)
