"""Fast CPU checks of the training core: one Stage1Objective step per recipe and add-on (finite loss,
gradients in the heads it trains) and Trainer.fit's cancel / resume / failure paths on a tiny stage 2."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from protoseg.bank import BankSample, ImageBank, build_bank
from protoseg.cancel import Cancelled, CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import ProtosegConfig, load_config
from protoseg.models.checkpoint import load_checkpoint
from protoseg.models.classnet import ClassNet
from protoseg.models.encoders import ImageEncoder, TextEncoder
from protoseg.train.configured import checkpoint_config
from protoseg.train.engine import BEST, LAST
from protoseg.train.errors import TrainingError
from protoseg.train.events import EventKind, TrainEvent
from protoseg.train.recipes import Stage1Objective, classnet_config, encode_class_prompts
from protoseg.train.stage2 import Stage2Trainer

torch.set_num_threads(2)
SIZE = 64  # smallest size whose last-stage CAM (stride 32) is more than one pixel
BACKBONE = "test_convnext"  # timm's smallest four-stage model (~0.2 M parameters), random init
CLASSES = ClassSpec(names=("tumour", "stroma", "lymph"))
LABELS = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 1, 1]], dtype=torch.float32)


class TinyEncoder(ImageEncoder, TextEncoder):
    """Frozen seeded conv encoder with a hashed text tower: PBIP/LPD/PLIM run offline in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder_id, self.dim, self.input_size = "test-tiny-conv", 8, 16
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.conv = nn.Conv2d(3, self.dim, 3, padding=1)
        self.freeze()

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.conv(images)).mean(dim=(2, 3))

    def encode_text(self, texts: list[str]) -> torch.Tensor:
        rows = [torch.randn(self.dim, generator=torch.Generator().manual_seed(sum(map(ord, t)))) for t in texts]
        return nn.functional.normalize(torch.stack(rows), dim=-1)


def _cfg(*overrides: str) -> ProtosegConfig:
    return load_config(
        None,
        [
            f"model.backbone={BACKBONE}",
            "model.weights=null",  # random init: tests never download ImageNet weights
            "model.projector_hidden=16",
            f"data.patch_size={SIZE}",
            "run.device=cpu",
            *overrides,
        ],
    )


def _bank(encoder: ImageEncoder) -> ImageBank:
    """Four single-class patches per class, two sub-clusters each."""
    rng = np.random.default_rng(0)
    samples = []
    for c, base in enumerate(((200, 60, 90), (230, 150, 190), (60, 40, 150))):
        for i in range(4):
            colour = np.clip(np.array(base) + rng.integers(-25, 26, 3), 0, 255)
            image = np.clip(colour + rng.integers(-10, 11, (16, 16, 3)), 0, 255).astype(np.uint8)
            label = tuple(int(j == c) for j in range(CLASSES.num_classes))
            samples.append(BankSample(image, label, f"{CLASSES.names[c]}-{i}"))
    return build_bank(samples, CLASSES, encoder, k=2, n_per_cluster=4)


def _one_step(
    cfg: ProtosegConfig, encoder: TinyEncoder | None = None, prototypes: torch.Tensor | None = None
) -> tuple[ClassNet, dict[str, float], torch.Tensor]:
    """Build the recipe's ClassNet and objective as Stage1Trainer does, run one loss + backward."""
    s1 = cfg.stage1
    k, dim = (1, 1) if encoder is None else (cfg.model.learnable_k, encoder.dim)
    if prototypes is not None:
        k, dim = int(prototypes.shape[1]), int(prototypes.shape[2])
    torch.manual_seed(0)
    net = ClassNet(classnet_config(cfg, CLASSES.num_classes, dim, k), prototypes=prototypes).train()
    text = encode_class_prompts(encoder, CLASSES.names, s1.plim.template) if "plim" in s1.addons else None
    objective = Stage1Objective(cfg, encoder, text, steps_per_epoch=1)
    images = torch.rand(len(LABELS), 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    loss, parts = objective(net, {"image": images, "label": LABELS}, step=3)
    assert loss.ndim == 0 and math.isfinite(loss.item()), parts
    assert all(math.isfinite(v) for v in parts.values()), parts
    loss.backward()
    return net, parts, loss


def _trained(params: list[torch.Tensor]) -> bool:
    return all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in params)


def _last_stage_head(net: ClassNet) -> list[torch.Tensor]:
    """Prototype head parameters the last-stage CAM depends on (projector MLP of stage 4, logit scales)."""
    return [*net.projector.mlps[-1].parameters(), net.logit_scale]


def test_cam_recipe_step_trains_the_classifier() -> None:
    net, parts, _ = _one_step(_cfg("stage1.recipe=cam"))
    assert set(parts) == {"cls"}
    assert _trained([net.classifier.weight])


def test_pbip_recipe_step_trains_the_projector_not_the_bank() -> None:
    encoder = TinyEncoder()
    bank = _bank(encoder)
    net, parts, _ = _one_step(_cfg("stage1.recipe=pbip"), encoder, bank.prototypes().float())
    assert set(parts) == {"cls", "sim"} and parts["sim"] > 0
    assert _trained(_last_stage_head(net))
    assert not any(p.requires_grad for p in net.prototypes.parameters())  # bank prototypes stay fixed
    assert all(p.grad is None for p in encoder.parameters())  # frozen encoder


class SpyEncoder(TinyEncoder):
    """TinyEncoder with weighted statistics (a weighted mean of its conv features) that records the weights."""

    weighted_statistics = True

    def __init__(self) -> None:
        super().__init__()
        self.weights_seen: list[torch.Tensor] = []

    def embed_weighted(self, images: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        self.weights_seen.append(weights.detach())
        feats = torch.tanh(self.conv(images))
        return (feats * weights).sum(dim=(2, 3)) / (weights.sum(dim=(2, 3)) + 1e-6)


def test_pbip_regions_reach_the_encoder_as_weights_or_as_filled_images() -> None:
    """masking=weights (the default) hands the encoder each FG/BG region's weights over the whole image, which
    still trains the CAM head; masking=fill hands it the paper's masked images only."""
    encoder = SpyEncoder()
    protos = _bank(encoder).prototypes().float()
    net, parts, _ = _one_step(_cfg("stage1.recipe=pbip"), encoder, protos)
    assert parts["sim"] > 0 and _trained(_last_stage_head(net))
    (w,) = encoder.weights_seen
    pairs = int(LABELS.sum())
    assert w.shape == (2 * pairs, 1, encoder.input_size, encoder.input_size)  # FG rows, then BG rows
    assert float(w.min()) >= 0 and float(w.max()) <= 1 and float(w[:pairs].sum()) > 0
    encoder.weights_seen.clear()
    _one_step(_cfg("stage1.recipe=pbip", "stage1.similarity.masking=fill"), encoder, protos)
    assert encoder.weights_seen == []


def test_lpd_recipe_step_trains_learnable_prototypes_with_diversity() -> None:
    encoder = TinyEncoder()
    net, parts, _ = _one_step(
        _cfg("stage1.recipe=lpd", "model.learnable_k=2", "stage1.lpd.diversity_warmup_epochs=0"), encoder
    )
    assert set(parts) == {"cls", "sim", "div"}
    assert _trained([net.prototypes.prototypes, *_last_stage_head(net)])


def test_pscl_addon_alone_trains_the_backbone_features() -> None:
    # cls_weight 0 isolates the add-on: its pixel embeddings are stage-3 backbone features
    net, parts, loss = _one_step(
        _cfg("stage1.recipe=cam", "stage1.addons=[pscl]", "stage1.cls_weight=0", "stage1.pseudo.bg_min_size=0")
    )
    assert set(parts) == {"cls", "pscl"} and parts["pscl"] > 0
    assert loss.item() == pytest.approx(0.1 * parts["pscl"], rel=1e-5)  # pscl.weight default
    backbone = [p for p in net.backbone.parameters() if p.grad is not None]
    assert backbone and any(float(p.grad.abs().sum()) > 0 for p in backbone)
    assert net.classifier.weight.grad is None or float(net.classifier.weight.grad.abs().sum()) == 0


def test_plim_addon_alone_trains_the_cam_head_through_its_masks() -> None:
    encoder = TinyEncoder()
    net, parts, loss = _one_step(_cfg("stage1.recipe=cam", "stage1.addons=[plim]", "stage1.cls_weight=0"), encoder)
    assert set(parts) == {"cls", "plim"} and loss.item() == pytest.approx(parts["plim"], rel=1e-5)
    assert _trained([net.classifier.weight])


def test_pbip_with_both_addons_reports_every_part() -> None:
    encoder = TinyEncoder()
    net, parts, _ = _one_step(
        _cfg("stage1.recipe=pbip", "stage1.addons=[pscl,plim]"), encoder, _bank(encoder).prototypes().float()
    )
    assert set(parts) == {"cls", "sim", "pscl", "plim"}
    assert _trained(_last_stage_head(net))


# ---- Trainer.fit: cancel, resume, failures (tiny stage 2: 8 patches, batch 4 -> 2 steps per epoch) ----
FIT_SIZE = 32  # stage 2 needs no meaningful CAMs


class Patches(Dataset):
    """In-memory stage-2 samples (image, pseudo-mask with ignored pixels, confidence)."""

    def __init__(self, n: int = 8) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.rand(n, 3, FIT_SIZE, FIT_SIZE, generator=g)
        self.masks = torch.randint(0, CLASSES.num_classes + 1, (n, FIT_SIZE, FIT_SIZE), generator=g)
        self.masks[:, :4] = 255

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": self.images[i], "mask": self.masks[i], "confidence": torch.ones(FIT_SIZE, FIT_SIZE)}


def _trainer(
    out: Path, ds: Dataset | None = None, cls: type[Stage2Trainer] = Stage2Trainer, **kw: Any
) -> Stage2Trainer:
    cfg = _cfg(
        f"data.patch_size={FIT_SIZE}",
        f"stage2.backbone={BACKBONE}",
        "stage2.decoder_dim=8",
        "stage2.epochs=3",
        "data.batch_size=4",
        f"run.out_dir={out}",
        "run.amp=false",
        "run.log_every=1000",
    )
    return cls(cfg, Patches() if ds is None else ds, None, CLASSES, **kw)


def test_fit_cancel_mid_epoch_then_resume(tmp_path: Path) -> None:
    token, events = CancelToken(), []

    def stop_at_step_3(e: TrainEvent) -> None:
        events.append(e)
        if e.kind is EventKind.STEP and e.step == 3:
            token.cancel()

    res = _trainer(tmp_path, callbacks=[stop_at_step_3], cancel=token).fit()
    assert res.cancelled and res.epochs_done == 1 and res.steps_done == 3
    assert [e.kind for e in events[-2:]] == [EventKind.CANCELLED, EventKind.END]
    ckpt = load_checkpoint(res.last)  # written at the end of epoch 1, usable on its own
    assert (ckpt.epoch, ckpt.step) == (1, 2) and "optimizer" in ckpt.extra
    logits = ckpt.build_model()(torch.rand(1, 3, FIT_SIZE, FIT_SIZE))
    assert logits.shape == (1, CLASSES.num_classes + 1, FIT_SIZE, FIT_SIZE)
    assert checkpoint_config(ckpt).stage2.epochs == 3

    resumed: list[TrainEvent] = []
    res2 = _trainer(tmp_path, callbacks=[resumed.append]).fit(resume=True)
    assert not res2.cancelled and res2.epochs_done == 3 and res2.steps_done == 6
    assert (resumed[0].kind, resumed[0].epoch, resumed[0].step) == (EventKind.START, 1, 2)
    assert [e.step for e in resumed if e.kind is EventKind.STEP] == [3, 4, 5, 6]
    final = load_checkpoint(tmp_path / "stage2" / LAST)
    assert (final.epoch, final.step) == (3, 6)
    assert {float(s["step"]) for s in final.extra["optimizer"]["state"].values()} == {6.0}  # AdamW state resumed
    assert res2.best == tmp_path / "stage2" / BEST  # no validation set: best.pt follows every epoch
    again = _trainer(tmp_path).fit(resume=True)  # a finished run has nothing left to do
    assert (again.epochs_done, again.steps_done, again.cancelled) == (3, 6, False)


def test_fit_cancel_before_first_checkpoint_leaves_a_usable_start(tmp_path: Path) -> None:
    token = CancelToken()
    token.cancel()
    res = _trainer(tmp_path, cancel=token).fit()
    assert res.cancelled and res.epochs_done == 0 and res.steps_done == 0 and res.best is None
    ckpt = load_checkpoint(res.last)
    assert (ckpt.epoch, ckpt.step) == (0, 0)
    ckpt.build_model()
    res2 = _trainer(tmp_path).fit(resume=True)  # resumes from scratch
    assert res2.epochs_done == 3 and res2.steps_done == 6


def test_fit_empty_dataset_is_a_training_error_not_a_cancel(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="training set is empty") as err:
        _trainer(tmp_path, ds=Patches(0)).fit()
    assert not isinstance(err.value, Cancelled)


class NaNTrainer(Stage2Trainer):
    def training_loss(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict]:
        loss, parts = super().training_loss(model, batch, step)
        return loss * float("nan"), parts


def test_fit_non_finite_loss_is_a_training_error(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="loss became nan at step 0") as err:
        _trainer(tmp_path, cls=NaNTrainer).fit()
    assert not isinstance(err.value, Cancelled)
    assert not (tmp_path / "stage2" / LAST).exists()


def test_encoder_without_weighted_statistics_gets_the_paper_masked_images_either_way() -> None:
    encoder = TinyEncoder()  # a CLIP / timm stand-in
    protos = _bank(encoder).prototypes().float()
    _, weights, loss_w = _one_step(_cfg("stage1.recipe=pbip"), encoder, protos)
    _, fill, loss_f = _one_step(_cfg("stage1.recipe=pbip", "stage1.similarity.masking=fill"), encoder, protos)
    assert weights == fill and torch.equal(loss_w, loss_f)


def test_resume_refuses_other_region_masking_and_old_runs_count_as_fill() -> None:
    """L_SIM's FG/BG regions are part of the loss: a PBIP run is continued only with the masking it was trained with
    (runs from before ``stage1.similarity.masking`` existed used the black fill)."""
    from types import SimpleNamespace

    from protoseg.config import to_dict
    from protoseg.models.checkpoint import Stage
    from protoseg.train.configured import resume_mismatches

    def ckpt(cfg: ProtosegConfig, drop_masking: bool = False) -> SimpleNamespace:
        train_config = to_dict(cfg)
        if drop_masking:
            del train_config["stage1"]["similarity"]["masking"]
        return SimpleNamespace(
            classes=CLASSES, stage=Stage.STAGE1, train_config=train_config, data_scale=1.0, model_config={}
        )

    weights, fill = _cfg("stage1.recipe=pbip"), _cfg("stage1.recipe=pbip", "stage1.similarity.masking=fill")
    assert resume_mismatches(ckpt(weights), {}, CLASSES, weights) == []
    assert resume_mismatches(ckpt(weights, drop_masking=True), {}, CLASSES, fill) == []
    (why,) = resume_mismatches(ckpt(weights, drop_masking=True), {}, CLASSES, weights)
    assert why == "stage1.similarity.masking 'fill' vs 'weights' (to resume: --set stage1.similarity.masking=fill)"
    cam = _cfg("stage1.recipe=cam")  # no L_SIM: nothing to compare
    assert resume_mismatches(ckpt(cam, drop_masking=True), {}, CLASSES, cam) == []
