"""CAM post-processing: normalisation, stage fusion, gating, background seeding and pseudo-labels.

Conventions (docs/interfaces.md): CAM tensors are (B, C, H, W) over the C tissue classes; pixel
label maps use classes 0..C-1, background = C and ignore = 255. All functions are torch
functions that keep the input device, except ``background_seed`` whose connected-component
step runs on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from protoseg.classes import IGNORE_INDEX

#: Stage fusion weights of PBIP for stages 2, 3 and 4.
DEFAULT_FUSION_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.4)
#: Grey level above which a pixel is white background (200 of 255).
DEFAULT_WHITE_THRESHOLD: float = 200.0 / 255.0
#: ITU-R BT.601 luma weights, as in the usual RGB -> grey conversion.
_LUMA = (0.299, 0.587, 0.114)


def normalize_cams(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ReLU then per-image, per-class min-max to [0, 1]: (m - min) / (max - min + eps)."""
    cam = F.relu(maps)
    flat = cam.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    hi = flat.max(dim=2).values[..., None, None]
    return (cam - lo) / (hi - lo + eps)


def resize(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (B, C, h, w) maps (no-op when already ``size``)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def fuse_cams(
    cams: Sequence[torch.Tensor],
    weights: Sequence[float] = DEFAULT_FUSION_WEIGHTS,
    size: tuple[int, int] | None = None,
) -> torch.Tensor:
    """Weighted sum of per-stage CAMs after bilinear resizing to ``size`` (default: the largest).

    ``weights`` align with the LAST ``len(weights)`` maps (so the default 0.3/0.3/0.4 weights
    stages 2, 3, 4 of four) and are divided by their sum, so fused [0, 1] CAMs stay in [0, 1].
    Maps with weight 0 are skipped.
    """
    if not cams:
        raise ValueError("fuse_cams needs at least one CAM")
    if len(weights) > len(cams):
        raise ValueError(f"{len(weights)} fusion weights for only {len(cams)} CAM stages")
    chosen = list(cams)[len(cams) - len(weights) :]
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"fusion weights must have a positive sum, got {tuple(weights)}")
    if size is None:
        size = max((tuple(c.shape[-2:]) for c in chosen), key=lambda s: s[0] * s[1])
    fused = None
    for cam, w in zip(chosen, weights):
        if w == 0:
            continue
        term = resize(cam, size) * (float(w) / total)
        fused = term if fused is None else fused + term
    assert fused is not None
    return fused


def label_gate(cams: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Multiply each class CAM by the image-level label (B, C) so absent classes are zero."""
    return cams * labels.to(cams.dtype)[:, :, None, None]


def class_scores(logits: torch.Tensor) -> torch.Tensor:
    """Image-level class scores as sigmoid probabilities of the (B, C) logits (multi-label)."""
    return torch.sigmoid(logits)


def score_gate(cams: torch.Tensor, logits: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    """Zero the CAM of every class whose score ``sigmoid(logit)`` is below ``threshold``.

    The score is a sigmoid probability (not a softmax over classes), since labels are multi-hot.
    """
    keep = (class_scores(logits) >= threshold).to(cams.dtype)
    return cams * keep[:, :, None, None]


def confidence(cams: torch.Tensor) -> torch.Tensor:
    """Per-pixel confidence = max CAM over classes, (B, C, H, W) -> (B, H, W)."""
    return cams.max(dim=1).values


def pseudo_labels(
    cams: torch.Tensor, background: torch.Tensor | None = None, bg_threshold: float = 0.25
) -> torch.Tensor:
    """Hard pseudo-mask (B, H, W): argmax class 0..C-1; background C where ``background`` is set
    or where the max CAM is below ``bg_threshold``."""
    c = cams.shape[1]
    best, label = cams.max(dim=1)
    label = label.masked_fill(best < bg_threshold, c)
    if background is not None:
        label = label.masked_fill(background.to(torch.bool), c)
    return label.long()


def pseudo_labels_with_ignore(
    cams: torch.Tensor,
    tau: float = 0.25,
    background: torch.Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """PSCL pixel labels (B, H, W): argmax where max CAM > ``tau``, else ``ignore_index``;
    pixels set in ``background`` get the background class C."""
    c = cams.shape[1]
    best, label = cams.max(dim=1)
    label = label.masked_fill(best <= tau, ignore_index)
    if background is not None:
        label = label.masked_fill(background.to(torch.bool), c)
    return label.long()


def grey(images: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of [0, 1] RGB images, (B, 3, H, W) -> (B, H, W)."""
    w = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
    return torch.einsum("bchw,c->bhw", images, w)


def remove_small_regions(mask: torch.Tensor, min_size: int) -> torch.Tensor:
    """Drop 8-connected True components smaller than ``min_size`` pixels from a (B, H, W) mask."""
    import numpy as np
    from scipy import ndimage

    arr = mask.detach().to("cpu", torch.bool).numpy()
    out = np.zeros_like(arr)
    structure = np.ones((3, 3), dtype=bool)
    for i, m in enumerate(arr):
        lab, n = ndimage.label(m, structure=structure)
        if n == 0:
            continue
        sizes = np.bincount(lab.ravel())
        keep = sizes >= min_size
        keep[0] = False
        out[i] = keep[lab]
    return torch.from_numpy(out).to(mask.device)


def background_seed(
    images: torch.Tensor, threshold: float = DEFAULT_WHITE_THRESHOLD, min_size: int = 400
) -> torch.Tensor:
    """Colour-threshold background: grey > ``threshold`` (images in [0, 1]) minus white specks
    smaller than ``min_size`` pixels; returns a bool (B, H, W) mask (True = background)."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"background_seed expects (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
    white = grey(images.float()) > threshold
    return remove_small_regions(white, min_size)


def _flip(x: torch.Tensor, kind: str) -> torch.Tensor:
    dims = {"h": (-1,), "v": (-2,), "hv": (-2, -1)}
    if kind not in dims:
        raise ValueError(f"unknown flip {kind!r}; use 'h', 'v' or 'hv'")
    return torch.flip(x, dims[kind])


def flip_tta(
    fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, flips: Sequence[str] = ("h", "v")
) -> torch.Tensor:
    """Average ``fn`` over the identity and the given flips of ``x`` ('h' = horizontal, 'v' =
    vertical, 'hv' = both), flipping each output back; ``fn`` must return (B, ..., H, W) maps."""
    total = fn(x)
    for kind in flips:
        total = total + _flip(fn(_flip(x, kind)), kind)
    return total / (1 + len(flips))
