"""Stage-1 recipes: which ClassNet head and which losses a run uses (cam / pbip / lpd, + pscl / plim).

- ``cam``:  1x1-conv CAM head, L = L_CLS (last stage).
- ``pbip``: fixed bank prototypes, L = a*L_CLS + b*L_SIM (PBIP Eq. L_FGS/L_BGS with the adaptive mask,
  delta applied on the raw scaled similarity map as in the PBIP code).
- ``lpd``:  learnable prototypes (C x k x d), the same FG/BG matching with them as anchors, plus the
  diversity regulariser after warm-up.
- ``pscl``: + w * pixel supervised-contrastive loss with CAM pseudo-labels, on stage-3 features or (option
  ``stage1.pscl.decoder``) on a light FPN pixel decoder over stages 2-4, the features the CAMs come from.
- ``plim``: + PLIM L_TTP/L_BTP/L_TBP with an image-text (open_clip) encoder; prompts use full class names.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from protoseg import cams as cam_ops
from protoseg.config import AddOn, ProtosegConfig, Recipe, RegionMasking, fixed_input_size
from protoseg.errors import ProtosegError
from protoseg.losses.classification import multistage_classification_loss
from protoseg.losses.contrastive import pixel_supcon_loss
from protoseg.losses.diversity import DiversityWarmup, lpd_pseudo_region, prototype_diversity_loss
from protoseg.losses.plim import PromptTemplates, plim_losses, prompt_names
from protoseg.losses.similarity import adaptive_masks, cam_area_regulariser, fg_bg_images, prototype_similarity_loss
from protoseg.models.classnet import ClassNet, ClassNetConfig, ClassNetOutput, HeadKind
from protoseg.train.evaluation import background_mask

logger = logging.getLogger(__name__)

PSCL_STAGE = 2  # stage-3 features (stride 16) carry the pixel embeddings when there is no pixel decoder


class RecipeError(ProtosegError):
    """A recipe cannot run with the given bank/encoder settings."""


def classnet_config(cfg: ProtosegConfig, num_classes: int, proto_dim: int, k: int) -> ClassNetConfig:
    """ClassNet architecture for the configured recipe."""
    head = {Recipe.CAM: HeadKind.CAM, Recipe.PBIP: HeadKind.BANK, Recipe.LPD: HeadKind.LEARNABLE}[cfg.stage1.recipe]
    pscl = cfg.stage1.pscl
    decoder_dim = pscl.decoder_dim if AddOn.PSCL in cfg.stage1.addons and pscl.decoder else 0
    return ClassNetConfig(
        backbone=cfg.model.backbone,
        weights=cfg.model.weights,
        head=head,
        num_classes=num_classes,
        k=k,
        proto_dim=proto_dim,
        projector_hidden=cfg.model.projector_hidden,
        stage_weights=cfg.stage1.stage_weights,
        fusion_weights=cfg.stage1.fusion_weights,
        score_threshold=cfg.stage1.score_gate,
        free_cams=cfg.stage1.label_free_cams,
        img_size=fixed_input_size(cfg, cfg.model.backbone),
        output_stride=cfg.model.output_stride,
        pixel_decoder_dim=decoder_dim,
    )


@dataclass
class Stage1Objective:
    """Computes the configured stage-1 loss on a batch; the encoder (if any) stays frozen."""

    cfg: ProtosegConfig
    encoder: nn.Module | None = None
    text_features: torch.Tensor | None = None  # (C, d) class prompts, PLIM only
    steps_per_epoch: int = 1

    def __post_init__(self) -> None:
        s1 = self.cfg.stage1
        if s1.recipe in (Recipe.PBIP, Recipe.LPD) or AddOn.PLIM in s1.addons:
            if self.encoder is None:
                raise RecipeError(f"recipe {s1.recipe.value} needs a frozen bank encoder (bank.encoder)")
        if AddOn.PLIM in s1.addons and self.text_features is None:
            raise RecipeError(
                "the plim add-on needs an image-text encoder: set bank.encoder.kind=open_clip with "
                "bank.encoder.model_name and bank.encoder.pretrained (hub id or local checkpoint)"
            )
        warm = round(s1.lpd.diversity_warmup_epochs * self.steps_per_epoch)
        self.warmup = DiversityWarmup(weight=s1.lpd.diversity_weight, warmup_steps=warm)
        self.generator = torch.Generator().manual_seed(self.cfg.run.seed)

    def __call__(self, model: nn.Module, batch: dict[str, Any], step: int) -> tuple[torch.Tensor, dict[str, float]]:
        net: ClassNet = model.module if hasattr(model, "module") else model  # unwrap DDP
        s1 = self.cfg.stage1
        x, y = batch["image"], batch["label"].float()
        out: ClassNetOutput = model(x)
        parts: dict[str, float] = {}
        l_cls = multistage_classification_loss(out.logits, y, net.output_stage_weights)
        total = s1.cls_weight * l_cls
        parts["cls"] = float(l_cls.detach())
        cam = cam_ops.normalize_cams(out.maps[-1])  # differentiable last-stage CAM in [0, 1]
        if s1.recipe in (Recipe.PBIP, Recipe.LPD):
            l_sim = self._similarity(net, x, cam, y, out.maps[-1])
            total = total + s1.similarity.weight * l_sim
            parts["sim"] = float(l_sim.detach())
        if s1.cam_area_weight > 0:
            total = total + s1.cam_area_weight * cam_area_regulariser(cam)
        if s1.recipe is Recipe.LPD and out.subcluster_maps is not None:
            w = self.warmup(step)
            if w > 0:
                region = lpd_pseudo_region(cam.detach(), labels=y)
                cos = out.subcluster_maps[-1] / net.logit_scale[-1].detach()  # back to cosines
                l_div = prototype_diversity_loss(cos, region, y, temperature=s1.lpd.diversity_temperature)
                total = total + w * l_div
                parts["div"] = float(l_div.detach())
        if AddOn.PSCL in s1.addons:
            l_pscl = self._pscl(net, out, x, y)
            total = total + s1.pscl.weight * l_pscl
            parts["pscl"] = float(l_pscl.detach())
        if AddOn.PLIM in s1.addons:
            l_plim = self._plim(x, cam, y)
            total = total + l_plim
            parts["plim"] = float(l_plim.detach())
        return total, parts

    def _similarity(
        self, net: ClassNet, x: torch.Tensor, cam: torch.Tensor, y: torch.Tensor, raw: torch.Tensor
    ) -> torch.Tensor:
        s1, sim = self.cfg.stage1, self.cfg.stage1.similarity
        fb = fg_bg_images(x, cam, y, s1.delta, raw=raw)  # b from the raw scaled similarity, M = normalised CAM
        assert self.encoder is not None
        rows = torch.arange(len(fb.class_index), device=x.device)
        if s1.max_pairs and len(rows) > s1.max_pairs:  # bound the frozen-encoder work per batch
            rows = torch.randperm(len(rows), generator=self.generator)[: s1.max_pairs].to(x.device)
        if len(rows) == 0:
            return (cam * 0).sum()
        if sim.masking is RegionMasking.WEIGHTS:  # the region's own pixels, no black fill
            f_fg, f_bg = encode_weighted_pairs(self.encoder, fb.images[rows], fb.w_fg[rows], fb.w_bg[rows])
        else:
            f_fg, f_bg = encode_pairs(self.encoder, fb.x_fg[rows], fb.x_bg[rows])
        res = prototype_similarity_loss(
            f_fg, f_bg, fb.class_index[rows], net.prototypes(), sim.temperature, sim.fg_weight, sim.bg_weight
        )
        return res.total

    def _pscl(self, net: ClassNet, out: ClassNetOutput, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pscl, pseudo = self.cfg.stage1.pscl, self.cfg.stage1.pseudo
        emb = out.embeddings if out.embeddings is not None else out.features[min(PSCL_STAGE, len(out.features) - 1)]
        size = tuple(emb.shape[-2:])
        with torch.no_grad():
            fused = net.fused_cams(out, size, labels=y, norm=self.cfg.stage1.pseudo.cams).detach()
            bg = background_mask(x, pseudo)  # the pseudo-mask background rule (glass detector)
            if bg is not None:
                bg = F.interpolate(bg[:, None].float(), size=size, mode="area")[:, 0] > 0.5
            labels = cam_ops.pseudo_labels_with_ignore(fused, pscl.tau, bg)
        return pixel_supcon_loss(emb, labels, pscl.temperature, pscl.max_pixels, self.generator)

    def _plim(self, x: torch.Tensor, cam: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        s1 = self.cfg.stage1
        assert self.encoder is not None and self.text_features is not None
        m_up, _ = adaptive_masks(cam, tuple(x.shape[-2:]), s1.delta)
        pairs = torch.nonzero(y > 0.5, as_tuple=False)
        if s1.max_pairs and len(pairs) > s1.max_pairs:
            pairs = pairs[torch.randperm(len(pairs), generator=self.generator)[: s1.max_pairs].to(pairs.device)]
        if len(pairs) == 0:
            return (cam * 0).sum()
        bi, ci = pairs[:, 0], pairs[:, 1]
        m = m_up[bi, ci].unsqueeze(1)
        t, b = encode_pairs(self.encoder, x[bi] * m, x[bi] * (1 - m))
        res = plim_losses(t, b, self.text_features.to(t), ci, weights=s1.plim.weights)
        return res.total


def encode_pairs(encoder: Any, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground and background images through the frozen encoder in ONE batched call (the encoder is in
    eval mode, so each image's features do not depend on its batch-mates); returns (features_a, features_b)."""
    feats = encoder.encode(torch.cat([a, b]))
    return feats[: len(a)], feats[len(a) :]


def encode_weighted_pairs(
    encoder: Any, images: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Two weighted regions of each image through the frozen encoder in ONE batched call (see
    ``ImageEncoder.encode_weighted``); returns (features_a, features_b)."""
    feats = encoder.encode_weighted(torch.cat([images, images]), torch.cat([w_a, w_b]))
    return feats[: len(images)], feats[len(images) :]


def encode_class_prompts(
    text_encoder: Any, class_names: tuple[str, ...], template: str, descriptions: tuple[str, ...] = ()
) -> torch.Tensor:
    """Text features (C, d) of ``template`` filled with each class's full name (PLIM q_k): "tumor" for TUM,
    "lymphocytic infiltrate" for LYM, ... (``losses.plim.prompt_names``; ``descriptions`` override)."""
    prompts = PromptTemplates(templates=(template,))
    names = prompt_names(class_names, descriptions)
    logger.info("PLIM prompts: %s", "; ".join(prompts.prompts(names)))
    with torch.no_grad():
        return prompts.encode(text_encoder, names)
