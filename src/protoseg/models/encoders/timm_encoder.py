"""Any timm model's pooled features (``num_classes=0``) as a frozen image encoder."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from protoseg.models.encoders.base import ImageEncoder
from protoseg.models.encoders.sources import HUB_PREFIX, require_model_folder
from protoseg.models.encoders.weights import (
    PRETRAINED_SETTING,
    WeightKind,
    offline_hub_folder,
    resolve_weights,
    seeded_init,
    weights_error,
)
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

#: ``pretrained`` values that mean "timm's default pretrained tag of this model".
DEFAULT_TAGS = ("default", "hub", "timm")


def _check_local_dir(folder: str, setting: str) -> Path:
    """A timm model folder (``hf download org/repo --local-dir DIR``) needs config.json and a weights file."""
    return require_model_folder(
        folder, setting, "config.json", "a timm model folder as `hf download org/repo --local-dir DIR` writes it"
    )


def _folder_config(folder: Path) -> dict[str, Any]:
    """The ``pretrained_cfg`` of a timm model folder's config.json (empty when unreadable)."""
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    inner = cfg.get("pretrained_cfg", cfg) if isinstance(cfg, dict) else {}
    return inner if isinstance(inner, dict) else {}


class TimmImageEncoder(ImageEncoder):
    """Frozen timm model with pooled features; owns the model's mean/std so callers pass [0, 1] images.

    ``pretrained``: ``"default"``/``"hub"`` (timm's default weights), a pretrained tag
    (``"a1_in1k"`` -> ``model_name.a1_in1k``), an ``"hf-hub:org/repo"`` id (also as ``model_name``; offline
    from its Hugging Face cache snapshot), a local checkpoint file, a local model folder (config.json +
    weights), or None for a seeded random init (logged). Failures raise ``EncoderWeightsError``.
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        pretrained: str | os.PathLike | None = None,
        input_size: int | None = None,
        setting: str = PRETRAINED_SETTING,
    ) -> None:
        super().__init__()
        import timm

        if pretrained is None and model_name.startswith(HUB_PREFIX):
            pretrained = model_name  # a hub model named by its id: its own weights
        source = resolve_weights(pretrained, model_name, setting)
        name, folder = model_name, None
        kwargs: dict[str, Any] = {"num_classes": 0, "pretrained": source.kind is not WeightKind.RANDOM}
        if source.kind is WeightKind.FILE:
            kwargs["pretrained_cfg_overlay"] = {"file": source.value}
        elif source.kind is WeightKind.DIRECTORY:
            folder = _check_local_dir(str(source.value), setting)
        elif source.kind is WeightKind.HF_HUB:
            folder = offline_hub_folder(str(source.value), setting)
            name = str(source.value)
        elif source.kind is WeightKind.TAG and source.value not in DEFAULT_TAGS:
            name = f"{model_name}.{source.value}"
        if folder is not None:
            name = f"local-dir:{folder}"
        if input_size is not None and self._fixed_size(timm, name, folder):
            kwargs["img_size"] = int(input_size)
        if source.kind is WeightKind.RANDOM:
            logger.warning("timm %s: no pretrained weights requested, random init (seed fixed)", model_name)
        try:
            with seeded_init(source.kind is WeightKind.RANDOM):
                model = timm.create_model(name, **kwargs)
        except Exception as exc:  # unknown model, hub unreachable, corrupt or mismatched file
            raise weights_error(model_name, source, exc, setting) from exc
        self.model = model
        cfg = dict(getattr(model, "pretrained_cfg", None) or {})
        mean = tuple(cfg.get("mean", IMAGENET_MEAN))
        std = tuple(cfg.get("std", IMAGENET_STD))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.input_size = int(input_size or cfg.get("input_size", (3, 224, 224))[-1])
        self.dim = int(model.num_features)
        self.encoder_id = f"timm:{model_name}@{source.id_suffix()}"
        self.freeze()
        logger.info("timm encoder %s ready (dim %d, input %d px)", self.encoder_id, self.dim, self.input_size)

    @staticmethod
    def _fixed_size(timm: Any, name: str, folder: Path | None = None) -> bool:
        """True for models (ViTs) whose position embeddings fix the input size at creation."""
        if folder is not None:
            return bool(_folder_config(folder).get("fixed_input_size", False))
        try:
            cfg = timm.models.get_pretrained_cfg(name)
        except Exception:  # noqa: BLE001 - unknown or odd names: treat as resizable
            return False
        return bool(getattr(cfg, "fixed_input_size", False)) if cfg is not None else False

    def embed(self, images: Tensor) -> Tensor:
        return self.model((images - self.mean) / self.std)
