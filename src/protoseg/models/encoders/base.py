"""Encoder interfaces shared by the bank and the prototype losses: frozen, differentiable, L2-normalised."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from protoseg.models.encoders.errors import EncoderError as EncoderError  # re-exported
from protoseg.models.encoders.errors import EncoderInputError
from protoseg.models.encoders.errors import EncoderWeightsError as EncoderWeightsError  # re-exported

logger = logging.getLogger(__name__)


def check_images(images: Tensor) -> Tensor:
    """Validate the (N, 3, H, W) float [0, 1] convention and return the images as a float tensor."""
    if not isinstance(images, Tensor):
        raise EncoderInputError(f"encoder input must be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise EncoderInputError(
            f"encoder input must have shape (N, 3, H, W), got {tuple(images.shape)}; "
            "convert (H, W, 3) arrays with torch.from_numpy(a).permute(2, 0, 1)[None] / 255"
        )
    if not images.is_floating_point():
        raise EncoderInputError(
            f"encoder input must be float in [0, 1], got dtype {images.dtype}; divide uint8 images by 255"
        )
    if images.numel() and float(images.detach().amax()) > 1.5:
        raise EncoderInputError(
            "encoder input has values above 1.5; images must be float in [0, 1] (divide 0-255 images by 255)"
        )
    return images


def resize_square(images: Tensor, size: int) -> Tensor:
    """Resize (N, 3, H, W) images to (size, size) with differentiable (antialiased) bilinear sampling."""
    if images.shape[-2:] == (size, size):
        return images
    shrink = images.shape[-2] > size or images.shape[-1] > size
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)


class ImageEncoder(nn.Module, ABC):
    """Frozen image encoder: ``encode`` maps (N, 3, H, W) float [0, 1] images to (N, dim) unit vectors.

    Parameters never require grad and the module stays in eval mode, but ``encode`` is differentiable
    with respect to its input (PBIP backpropagates through the masked images).
    """

    encoder_id: str  # stable identifier stored in image banks
    dim: int  # embedding width
    input_size: int  # images are resized to (input_size, input_size) before embedding
    #: True when ``embed_weighted`` describes a weighted region of the unmasked image (the built-in descriptor)
    weighted_statistics: bool = False

    @abstractmethod
    def embed(self, images: Tensor) -> Tensor:
        """Raw (N, dim) embedding of images already checked and resized to ``input_size``."""

    def encode(self, images: Tensor) -> Tensor:
        """L2-normalised (N, dim) embedding of (N, 3, H, W) float [0, 1] images."""
        x = resize_square(check_images(images), self.input_size)
        feats = self.embed(x.to(self.device))
        return F.normalize(feats.float(), dim=-1, eps=1e-8)

    def embed_weighted(self, images: Tensor, weights: Tensor) -> Tensor:
        """Raw (N, dim) embedding of each image's region weighted by (N, 1, H, W) ``weights`` in [0, 1], for
        encoders whose statistics take per-pixel weights (``weighted_statistics``); others never get here."""
        raise NotImplementedError(f"{type(self).__name__} has no weighted statistics")

    def encode_weighted(self, images: Tensor, weights: Tensor) -> Tensor:
        """L2-normalised (N, dim) embedding of the regions of (N, 3, H, W) images weighted by (N, 1, H, W)
        ``weights`` in [0, 1] (differentiable in both). An encoder without ``weighted_statistics`` encodes the
        masked image ``weights * images`` (PBIP's X_FG / X_BG) exactly as ``encode`` would."""
        if weights.ndim != 4 or weights.shape[1] != 1 or weights.shape[0] != images.shape[0]:
            raise EncoderInputError(
                f"region weights must have shape (N, 1, H, W) with N = {images.shape[0]}, got {tuple(weights.shape)}"
            )
        if not self.weighted_statistics:
            return self.encode(images * weights)
        x = resize_square(check_images(images), self.input_size)
        w = resize_square(weights.float(), self.input_size).clamp(0.0, 1.0)
        feats = self.embed_weighted(x.to(self.device), w.to(self.device))
        return F.normalize(feats.float(), dim=-1, eps=1e-8)

    def forward(self, images: Tensor) -> Tensor:
        return self.encode(images)

    def freeze(self) -> None:
        """Turn off gradients of all parameters and switch to eval mode (done by every constructor)."""
        for p in self.parameters():
            p.requires_grad_(False)
        nn.Module.train(self, False)

    def train(self, mode: bool = True) -> ImageEncoder:
        """Stay in eval mode whatever the parent module asks: the encoder is frozen."""
        return nn.Module.train(self, False)

    @property
    def device(self) -> torch.device:
        """Device of the encoder's parameters (or buffers); CPU for a module without tensors."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def extra_repr(self) -> str:
        return f"encoder_id={self.encoder_id!r}, dim={self.dim}, input_size={self.input_size}"


class TextEncoder(ABC):
    """Text tower of an image-text model: ``encode_text`` maps N strings to (N, dim) unit vectors."""

    @abstractmethod
    def encode_text(self, texts: list[str]) -> Tensor:
        """L2-normalised (N, dim) embedding of the texts, in the image embedding space."""


def check_texts(texts: list[str]) -> list[str]:
    """Validate a list of strings for ``encode_text``."""
    if isinstance(texts, str):
        raise EncoderInputError("encode_text expects a list of strings, got a single string; wrap it in [...]")
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise EncoderInputError("encode_text expects a non-empty list of strings")
    return texts
