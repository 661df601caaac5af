"""open_clip image and text towers (CLIP, PLIP, QuiltNet, CONCH-style checkpoints) as frozen encoders."""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import Tensor

from protoseg.models.encoders.base import EncoderWeightsError, ImageEncoder, TextEncoder, check_texts
from protoseg.models.encoders.sources import require_model_folder
from protoseg.models.encoders.weights import (
    PRETRAINED_SETTING,
    WeightKind,
    offline_hub_folder,
    resolve_weights,
    seeded_init,
    weights_error,
)

logger = logging.getLogger(__name__)

_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _as_int_size(size: Any) -> int:
    if isinstance(size, (tuple, list)):
        return int(size[-1])
    return int(size)


def _check_local_dir(folder: str, setting: str) -> None:
    """A local open_clip folder needs open_clip_config.json and a weights file (else open_clip inits at random)."""
    require_model_folder(folder, setting, "open_clip_config.json", "a complete open_clip model folder")


class OpenClipEncoder(ImageEncoder, TextEncoder):
    """Frozen open_clip model; normalisation (CLIP mean/std) and resizing happen in torch, differentiably.

    ``pretrained``: an open_clip tag (``"openai"``), an ``"hf-hub:org/repo"`` id, a local checkpoint
    file (state dict), a local folder with ``open_clip_config.json`` + weights, or None for a seeded
    random init (testing only); offline, an hf-hub id loads from its Hugging Face cache snapshot.
    Failures raise ``EncoderWeightsError`` naming ``bank.encoder.pretrained``.
    """

    def __init__(
        self,
        model_name: str = "ViT-B-32",
        pretrained: str | os.PathLike | None = None,
        input_size: int | None = None,
        setting: str = PRETRAINED_SETTING,
    ) -> None:
        super().__init__()
        import open_clip

        if pretrained is None and model_name.startswith(("hf-hub:", "local-dir:")):
            pretrained = model_name.removeprefix("local-dir:")  # weights named by the model id itself
        source = resolve_weights(pretrained, model_name, setting)
        name, tag = model_name, None
        if source.kind is WeightKind.HF_HUB:
            cached = offline_hub_folder(str(source.value), setting)
            name = str(source.value) if cached is None else f"local-dir:{cached}"
        elif source.kind is WeightKind.DIRECTORY:
            _check_local_dir(str(source.value), setting)
            name = f"local-dir:{source.value}"
        elif source.kind in (WeightKind.FILE, WeightKind.TAG):
            tag = source.value
        kwargs: dict[str, Any] = {"pretrained": tag}
        if input_size is not None:
            kwargs["force_image_size"] = int(input_size)
        if source.kind is WeightKind.RANDOM:
            logger.warning("open_clip %s: no pretrained weights requested, random init (seed fixed)", model_name)
            kwargs["pretrained_text"] = False
        try:
            with seeded_init(source.kind is WeightKind.RANDOM):
                model = open_clip.create_model(name, **kwargs)
        except Exception as exc:  # network, missing tag, corrupt or mismatched checkpoint
            raise weights_error(model_name, source, exc, setting) from exc
        self.model = model
        self._tokenizer_name = name
        self._tokenizer: Any = None
        self._setting = setting
        visual = model.visual
        cfg = getattr(visual, "preprocess_cfg", None) or {}
        mean = tuple(cfg.get("mean", getattr(visual, "image_mean", None) or _CLIP_MEAN))
        std = tuple(cfg.get("std", getattr(visual, "image_std", None) or _CLIP_STD))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1), persistent=False)
        self.input_size = _as_int_size(getattr(visual, "image_size", input_size or 224))
        self.encoder_id = f"open_clip:{model_name}@{source.id_suffix()}"
        self.freeze()
        self.dim = self._probe_dim()
        logger.info("open_clip encoder %s ready (dim %d, input %d px)", self.encoder_id, self.dim, self.input_size)

    def _probe_dim(self) -> int:
        out = getattr(self.model.visual, "output_dim", None)
        if isinstance(out, int):
            return out
        with torch.no_grad():
            probe = torch.zeros(1, 3, self.input_size, self.input_size)
            return int(self.model.encode_image(probe).shape[-1])

    def embed(self, images: Tensor) -> Tensor:
        return self.model.encode_image((images - self.mean) / self.std)

    def tokenizer(self) -> Any:
        """The model's tokenizer, created on first use; HF tokenizers need the hub or a local cache."""
        if self._tokenizer is None:
            import open_clip

            try:
                self._tokenizer = open_clip.get_tokenizer(self._tokenizer_name)
            except Exception as exc:
                raise EncoderWeightsError(
                    f"could not create the tokenizer of open_clip model {self._tokenizer_name!r}: "
                    f"{type(exc).__name__}: {exc}. Hugging Face tokenizers need network access or a local "
                    f"cache; set `{self._setting}` to a local folder holding open_clip_config.json, the "
                    "weights and the tokenizer files"
                ) from exc
        return self._tokenizer

    def encode_text(self, texts: list[str]) -> Tensor:
        tokens = self.tokenizer()(check_texts(texts)).to(self.device)
        feats = self.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1, eps=1e-8)
