"""CAM post-processing: normalisation, stage fusion, gating, glass background and pseudo-labels.

Conventions (docs/interfaces.md): CAM tensors are (B, C, H, W) over the C tissue classes; pixel
label maps use classes 0..C-1, background = C and ignore = 255. All functions are torch
functions that keep the input device, except ``glass_background`` whose colour and morphology
step runs on CPU.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from protoseg.cam_norm import CamNorm
from protoseg.classes import IGNORE_INDEX

#: Stage fusion weights of PBIP for stages 2, 3 and 4.
DEFAULT_FUSION_WEIGHTS: tuple[float, ...] = (0.3, 0.3, 0.4)


def normalize_cams(maps: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """ReLU then per-image, per-class min-max to [0, 1]: (m - min) / (max - min + eps)."""
    cam = F.relu(maps)
    flat = cam.flatten(2)
    lo = flat.min(dim=2).values[..., None, None]
    hi = flat.max(dim=2).values[..., None, None]
    return (cam - lo) / (hi - lo + eps)


def normalize_cams_joint(maps: torch.Tensor, keep: torch.Tensor | None = None, eps: float = 1e-5) -> torch.Tensor:
    """ReLU, zero for classes not in ``keep`` (B, C), then divided by the image's largest value over the kept
    classes: the argmax between classes is the raw CAM's (per-class min-max lets a class that is weak
    everywhere still reach 1 and take pixels from a strong one)."""
    cam = F.relu(maps)
    if keep is not None:
        cam = cam * keep.to(cam.dtype)[:, :, None, None]
    hi = cam.flatten(1).max(dim=1).values[:, None, None, None]
    return cam / (hi + eps)


def scale_cams(maps: torch.Tensor, norm: CamNorm | str, keep: torch.Tensor | None = None) -> torch.Tensor:
    """``normalize_cams`` (PER_CLASS) or ``normalize_cams_joint`` over the ``keep`` classes (JOINT)."""
    if CamNorm(norm) is CamNorm.JOINT:
        return normalize_cams_joint(maps, keep)
    return normalize_cams(maps)


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


def gate_classes(scores: torch.Tensor, thresholds: torch.Tensor | float) -> torch.Tensor:
    """(B, C) bool: classes whose score passes its threshold (one for all, or one per class (C,)), always
    with the top-scoring class (tissue has a class): the label-free class gate."""
    limit = torch.as_tensor(thresholds, dtype=scores.dtype, device=scores.device)
    return (scores >= limit) | (scores == scores.amax(dim=1, keepdim=True))


def confidence(cams: torch.Tensor) -> torch.Tensor:
    """Per-pixel confidence = max CAM over classes, (B, C, H, W) -> (B, H, W)."""
    return cams.max(dim=1).values


def candidate_classes(cams: torch.Tensor) -> torch.Tensor:
    """(B, C) bool: classes whose (gated) CAM is non-zero somewhere in the image (the classes present)."""
    return cams.flatten(2).amax(dim=2) > 0


def uncertain_pixels(cams: torch.Tensor, tau: float = 0.0, tie_margin: float = 0.0) -> torch.Tensor:
    """(B, H, W) bool: pixels that must choose among >= 2 candidate classes and either have max CAM
    <= ``tau`` or a best-minus-second CAM margin < ``tie_margin``.

    In an image with one candidate class (e.g. a single-label patch, label-gated) no pixel is
    uncertain: every tissue pixel is that class, however weak its CAM.
    """
    b, c = cams.shape[:2]
    multi = candidate_classes(cams).sum(dim=1) >= 2
    if c < 2 or not bool(multi.any()) or (tau <= 0 and tie_margin <= 0):
        return torch.zeros((b, *cams.shape[-2:]), dtype=torch.bool, device=cams.device)
    top = cams.topk(2, dim=1).values
    unsure = (top[:, 0] <= tau) | ((top[:, 0] - top[:, 1]) < tie_margin)
    return unsure & multi[:, None, None]


def pseudo_labels(
    cams: torch.Tensor,
    background: torch.Tensor | None = None,
    tau: float = 0.0,
    tie_margin: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
) -> torch.Tensor:
    """Hard pseudo-mask (B, H, W) as in PBIP: argmax over the (gated) classes; :func:`uncertain_pixels`
    become ``ignore_index`` (never background); background C only where ``background`` is set."""
    c = cams.shape[1]
    present = candidate_classes(cams)  # an absent class never wins a tie of zeros
    label = cams.masked_fill(~present[:, :, None, None], float("-inf")).argmax(dim=1)
    label = label.masked_fill(uncertain_pixels(cams, tau, tie_margin), ignore_index)
    label = label.masked_fill(~present.any(dim=1)[:, None, None], ignore_index)  # no class at all: unknown
    if background is not None:
        label = label.masked_fill(background.to(device=label.device, dtype=torch.bool), c)
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


def glass_background(images: torch.Tensor, open_radius: float = 0.03, min_size: int = 300) -> torch.Tensor:
    """Bool (B, H, W) background mask of [0, 1] RGB images from the adaptive glass detector
    (``protoseg.slide.glass``: Otsu on saturation and optical density, opening, small-object removal)."""
    import numpy as np

    from protoseg.slide.glass import GlassRule, glass_mask

    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"glass_background expects (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
    rule = GlassRule(open_radius=open_radius, min_size=min_size)
    rgb = (images.detach().float().clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    out = np.stack([glass_mask(np.ascontiguousarray(im), rule) for im in rgb])
    return torch.from_numpy(out).to(images.device)


#: The flips of every test-time augmentation protoseg does (``predict --tta``, ``eval --tta``, stage-2
#: validation with ``stage2.tta``), so an evaluation scores what a prediction gives.
TTA_FLIPS: tuple[str, ...] = ("h", "v", "hv")


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
