"""Stage-1 and stage-2 losses: classification, PBIP FG/BG similarity, LPD diversity, PSCL, PLIM, CE.

Pure functions over tensors; each docstring names the paper and equation it implements.
"""

from __future__ import annotations

from protoseg.losses._common import LossInputError
from protoseg.losses.classification import (
    DEFAULT_STAGE_WEIGHTS,
    multilabel_soft_margin,
    multistage_classification_loss,
)
from protoseg.losses.contrastive import pixel_supcon_loss, pscl_labels, supcon_from_features
from protoseg.losses.distill import distillation_kl
from protoseg.losses.diversity import (
    DiversityKind,
    DiversityWarmup,
    lpd_pseudo_region,
    prototype_diversity_loss,
)
from protoseg.losses.noise_ce import confidence_weighted_ce, noise_reduced_ce, segmentation_ce
from protoseg.losses.plim import (
    DEFAULT_TEMPLATE,
    PlimLoss,
    PromptTemplates,
    SimilarityMapping,
    plim_losses,
    plim_similarity,
)
from protoseg.losses.similarity import (
    FgBgBatch,
    SimilarityLoss,
    adaptive_masks,
    cam_area_regulariser,
    class_similarities,
    fg_bg_images,
    prototype_similarity_loss,
)

__all__ = [
    "DEFAULT_STAGE_WEIGHTS",
    "DEFAULT_TEMPLATE",
    "DiversityKind",
    "DiversityWarmup",
    "FgBgBatch",
    "LossInputError",
    "PlimLoss",
    "PromptTemplates",
    "SimilarityLoss",
    "SimilarityMapping",
    "adaptive_masks",
    "cam_area_regulariser",
    "class_similarities",
    "confidence_weighted_ce",
    "distillation_kl",
    "fg_bg_images",
    "lpd_pseudo_region",
    "multilabel_soft_margin",
    "multistage_classification_loss",
    "noise_reduced_ce",
    "pixel_supcon_loss",
    "plim_losses",
    "plim_similarity",
    "prototype_diversity_loss",
    "prototype_similarity_loss",
    "pscl_labels",
    "segmentation_ce",
    "supcon_from_features",
]
