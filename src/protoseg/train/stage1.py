"""Stage-1 training: ClassNet on image-level labels; ``best.pt`` is the epoch whose label-free prediction is best on
validation (``selection_metric``), label-gated pseudo-mask metrics logged beside it."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from protoseg.bank.core import ImageBank
from protoseg.bank.encoder_lookup import encoder_for_bank
from protoseg.cancel import CancelToken
from protoseg.classes import ClassSpec
from protoseg.config import AddOn, ProtosegConfig, Recipe
from protoseg.models.checkpoint import Stage
from protoseg.models.classnet import ClassNet
from protoseg.models.encoders import EncoderKind, EncoderSpec, ImageEncoder, TextEncoder, build_encoder
from protoseg.train.calibration import calibrate_from_scores, image_scores, presence_balanced_accuracy
from protoseg.train.configured import ConfiguredTrainer
from protoseg.train.device_augment import batch_augment_for
from protoseg.train.evaluation import evaluate_stage1
from protoseg.train.events import Callback
from protoseg.train.recipes import RecipeError, Stage1Objective, classnet_config, encode_class_prompts

logger = logging.getLogger(__name__)


def encoder_from_config(cfg: ProtosegConfig, bank: ImageBank | None = None) -> ImageEncoder:
    """The frozen bank encoder: the one ``bank`` was built with, at its recorded input size, when a bank is
    given (whatever ``data.patch_size``: crops are resized for it); else the one ``bank.encoder`` names,
    the descriptor defaulting to the patch size (the size then recorded in the bank built with it)."""
    e = cfg.bank.encoder
    size = e.input_size or (cfg.data.patch_size if e.kind is EncoderKind.DESCRIPTOR else None)
    spec = EncoderSpec(kind=e.kind, model_name=e.model_name, pretrained=e.pretrained, input_size=size)
    if bank is None:
        return build_encoder(spec)
    encoder = encoder_for_bank(bank, weights_from=spec)
    logger.info(
        "bank encoder %s embeds %d px crops (training patches: %d px)",
        encoder.encoder_id,
        encoder.input_size,
        cfg.data.patch_size,
    )
    return encoder


#: Selection metric of stage 1 with val masks: label-free mIoU (tissue protocol, this epoch's calibrated gate).
LABEL_FREE_MIOU = "label_free_mIoU"
#: Selection metric of stage 1 without val masks: macro balanced accuracy of the gated classes against the val
#: image labels (F1 would reward keeping a common class always: an untrained model scored above trained ones).
PRESENCE_ACCURACY = "label_free_presence_balanced_acc"


def selection_metric(val_masks: bool, val_images: bool) -> str:
    """The metric ``best.pt`` is chosen by: what a user gets without labels, measured on the val masks when
    there are some, else by the image labels (with neither, there is no validation: best.pt = last.pt)."""
    return LABEL_FREE_MIOU if val_masks or not val_images else PRESENCE_ACCURACY


class Stage1Trainer(ConfiguredTrainer):
    """Trains the configured recipe; PBIP needs an image bank, LPD can start from one."""

    stage = Stage.STAGE1.value
    without_val_masks = (
        "pseudo-mask and label-free mIoU are not measured (they need a mask per patch); best.pt is chosen by "
        f"{PRESENCE_ACCURACY} (macro balanced accuracy of the label-free class gate against the val image labels)"
    )

    def __init__(
        self,
        cfg: ProtosegConfig,
        train_ds: Dataset,
        val_ds: Dataset | None,
        classes: ClassSpec,
        bank: Any | None = None,
        encoder: ImageEncoder | None = None,
        callbacks: Sequence[Callback] = (),
        cancel: CancelToken | None = None,
    ) -> None:
        s1 = cfg.stage1
        super().__init__(Stage.STAGE1, cfg, train_ds, val_ds, classes, callbacks, cancel)
        self.batch_augment = batch_augment_for(cfg, self.optim.seed + self.dist.rank)
        self.bank = bank
        needs_encoder = s1.recipe is not Recipe.CAM or AddOn.PLIM in s1.addons
        self.encoder = encoder if encoder is not None else (encoder_from_config(cfg, bank) if needs_encoder else None)
        prototypes, k, dim = None, 1, 1
        if s1.recipe is Recipe.PBIP:
            if bank is None:
                raise RecipeError(
                    "recipe pbip needs an image bank: set bank.path or build one with `protoseg bank build`"
                )
            if self.encoder is not None and bank.encoder_id != self.encoder.encoder_id:
                raise RecipeError(
                    f"the bank was built with encoder {bank.encoder_id!r} but {self.encoder.encoder_id!r} was "
                    "passed in; pass encoder=None to use the bank's own encoder"
                )
            prototypes = bank.prototypes().float()
            k, dim = int(prototypes.shape[1]), int(prototypes.shape[2])
        elif s1.recipe is Recipe.LPD:
            assert self.encoder is not None
            k, dim = cfg.model.learnable_k, int(self.encoder.dim)
            if bank is not None and bank.k == k:
                prototypes = bank.prototypes().float()
        if bank is not None and tuple(bank.class_spec.names) != tuple(classes.names):
            raise RecipeError(f"bank classes {bank.class_spec.names} differ from dataset classes {classes.names}")
        self.net = ClassNet(classnet_config(cfg, classes.num_classes, dim, k), prototypes=prototypes)
        text = None
        if AddOn.PLIM in s1.addons:
            if not isinstance(self.encoder, TextEncoder):
                raise RecipeError("the plim add-on needs bank.encoder.kind=open_clip (an image-text model)")
            text = encode_class_prompts(self.encoder, classes.names, s1.plim.template, s1.plim.descriptions)
        if self.encoder is not None:
            self.encoder.to(self.device)
        self._gate_val = val_ds if val_ds is not None and len(val_ds) else None  # type: ignore[arg-type]
        has_masks = self._val is not None and len(self._val) > 0  # type: ignore[arg-type]
        self.monitor = selection_metric(has_masks, self._gate_val is not None)
        if self._gate_val is None:
            logger.info("no validation images: the label-free class gate keeps the fixed threshold %.2f", s1.score_gate)
        steps = max(1, len(train_ds) // max(1, cfg.data.batch_size))  # type: ignore[arg-type]
        self.objective = Stage1Objective(cfg, self.encoder, text, steps_per_epoch=steps)

    def training_loss(
        self, model: torch.nn.Module, batch: dict[str, Any], step: int
    ) -> tuple[torch.Tensor, dict[str, float]]:
        return self.objective(model, batch, step)

    def validate(self) -> dict[str, float]:
        """Calibrate the label-free class gate on the val images (saved with the checkpoint) and score its presence
        balanced accuracy from the same pass; then, on the val masks, the label-gated pseudo-mask metrics and the
        label-free prediction's (with this gate) from one more pass."""
        metrics: dict[str, float] = {}
        if self._gate_val is not None:
            scores, present = image_scores(self.net, self._gate_val, self.device, self.cfg.data.batch_size)
            cal = calibrate_from_scores(self.net, scores, present, self.classes.names)
            metrics[PRESENCE_ACCURACY] = presence_balanced_accuracy(scores, present, cal.thresholds)
        if self._val is not None and len(self._val):  # type: ignore[arg-type]
            metrics.update(evaluate_stage1(self.net, self._val, self.classes, self.cfg, self.device))
        return metrics

    def checkpoint_extra(self) -> dict[str, Any]:
        return {
            "recipe": self.cfg.stage1.recipe.value,
            "addons": [a.value for a in self.cfg.stage1.addons],
            "bank_path": self.cfg.bank.path,
            "encoder_id": getattr(self.encoder, "encoder_id", None),
        }
