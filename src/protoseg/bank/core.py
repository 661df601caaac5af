"""Image bank value objects: input samples, members, and the bank with its prototype computation."""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from protoseg.bank.errors import BankError
from protoseg.classes import ClassSpec

logger = logging.getLogger(__name__)

Box = tuple[int, int, int, int]
THUMBNAIL_SIZE = 64


@dataclass(frozen=True)
class BankSample:
    """One candidate patch: RGB uint8 (H, W, 3), multi-hot image label, where it came from."""

    image: np.ndarray
    label: tuple[int, ...]
    source: str
    box: Box | None = None  # level-0 (x, y, w, h) when cut from a slide
    mpp: float | None = None


@dataclass(frozen=True)
class BankMember:
    """Metadata of one bank patch; its feature and thumbnail are the same row of the bank arrays."""

    member_id: str
    class_index: int
    cluster: int
    source: str
    box: Box | None = None
    mpp: float | None = None
    excluded: bool = False
    pinned: bool = False
    added_by_user: bool = False
    distance: float = 0.0  # cosine distance (1 - cos) to its cluster centre / prototype

    @property
    def active(self) -> bool:
        """True when the member contributes to prototypes (pinned members always do)."""
        return self.pinned or not self.excluded


def _frozen_array(a: np.ndarray, dtype: type, ndim: int, what: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.ndim != ndim:
        raise BankError(f"bank {what} must have {ndim} dimensions, got shape {arr.shape}")
    if arr.dtype != dtype or arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=dtype, order="C", copy=True)
        arr.flags.writeable = False
    return arr


@dataclass(frozen=True, eq=False)
class ImageBank:
    """Per-class, per-sub-cluster representative patches; curation functions return new banks.

    ``features[i]`` (L2-normalised encoder embedding) and ``thumbnails[i]`` belong to ``members[i]``.
    Arrays are stored read-only so a bank can be shared safely.
    """

    class_spec: ClassSpec
    encoder_id: str
    k: int
    members: tuple[BankMember, ...]
    features: np.ndarray
    thumbnails: np.ndarray
    n_per_cluster: int = 100
    #: side (px) the encoder resized patches to; any training patch size is resized to it. None: unknown
    #: (banks saved before it was recorded; the descriptor's size is also part of its ``encoder_id``)
    encoder_input_size: int | None = None
    #: ``data.scale`` the folder patches were resampled by when the bank was built from them (None: unknown,
    #: banks saved before it was recorded or built from slide regions, whose members record their mpp)
    data_scale: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", tuple(self.members))
        feats = _frozen_array(self.features, np.float32, 2, "features")
        thumbs = _frozen_array(self.thumbnails, np.uint8, 4, "thumbnails")
        object.__setattr__(self, "features", feats)
        object.__setattr__(self, "thumbnails", thumbs)
        n = len(self.members)
        if feats.shape[0] != n or thumbs.shape[0] != n:
            raise BankError(f"bank has {n} members but {feats.shape[0]} feature rows and {thumbs.shape[0]} thumbnails")
        if thumbs.shape[3] != 3:
            raise BankError(f"thumbnails must be (n, t, t, 3) RGB, got shape {thumbs.shape}")
        if self.k < 1:
            raise BankError(f"bank k must be >= 1, got {self.k}")
        if self.encoder_input_size is not None:
            size = int(self.encoder_input_size)
            if size < 1:
                raise BankError(f"bank encoder_input_size must be a positive number of pixels, got {size}")
            object.__setattr__(self, "encoder_input_size", size)
        if self.data_scale is not None:
            scale = float(self.data_scale)
            if not (math.isfinite(scale) and scale > 0):
                raise BankError(f"bank data_scale must be a positive number, got {self.data_scale!r}")
            object.__setattr__(self, "data_scale", scale)
        ids = [m.member_id for m in self.members]
        if len(set(ids)) != n:
            raise BankError("bank member ids must be unique")
        for m in self.members:
            if not 0 <= m.class_index < self.class_spec.num_classes or not 0 <= m.cluster < self.k:
                raise BankError(
                    f"member {m.member_id}: class {m.class_index} / cluster {m.cluster} outside "
                    f"{self.class_spec.num_classes} classes x {self.k} clusters"
                )

    @property
    def dim(self) -> int:
        """Feature width."""
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return len(self.members)

    def index_of(self, member_ids: Sequence[str]) -> list[int]:
        """Row indices of the given member ids; unknown ids raise ``BankError`` listing them."""
        lookup = {m.member_id: i for i, m in enumerate(self.members)}
        missing = [i for i in member_ids if i not in lookup]
        if missing:
            raise BankError(f"unknown bank member ids: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        return [lookup[i] for i in member_ids]

    def active_mask(self) -> np.ndarray:
        """(n,) bool: members that count for prototypes (not excluded, or pinned)."""
        return np.array([m.active for m in self.members], dtype=bool)

    def cluster_counts(self) -> np.ndarray:
        """(C, K) number of active members per class and sub-cluster."""
        counts = np.zeros((self.class_spec.num_classes, self.k), dtype=np.int64)
        for m in self.members:
            if m.active:
                counts[m.class_index, m.cluster] += 1
        return counts

    def resolution_mismatch(self, data_scale: float | None, mpp: float | None) -> str | None:
        """Why this bank's patches were embedded at another resolution than training patches resampled by
        ``data_scale`` (folder data; None for slide regions) at ``mpp`` µm/px (None: unknown), or None.

        Prototypes then describe other pixel sizes than the crops they are compared with in training."""
        if data_scale is not None and self.data_scale is not None and not math.isclose(self.data_scale, data_scale):
            return (
                f"its folder patches were resampled by {self.data_scale:g} (data.scale) when it was built; training "
                f"resamples them by {data_scale:g}"
            )
        mpps = [m.mpp for m in self.members if m.mpp]
        if mpp and mpps:
            built = float(np.median(mpps))
            if not 0.9 <= built / mpp <= 1.1:
                return f"its members were read at {built:.3g} µm/px (median); training patches are at {mpp:.3g} µm/px"
        return None

    def replace(self, **changes: object) -> ImageBank:
        """Copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def prototypes(self) -> torch.Tensor:
        """(C, K, d) float32: per (class, cluster) mean of active members' unit features, renormalised.

        A sub-cluster left without active members (class had fewer than K samples, or curation removed
        them) falls back to the mean of its class's active members, with a warning. A class without any
        active member raises ``BankError``: add or include members of that class first.
        """
        c_n, k = self.class_spec.num_classes, self.k
        unit = self.features / np.maximum(np.linalg.norm(self.features, axis=1, keepdims=True), 1e-12)
        active = self.active_mask()
        classes = np.array([m.class_index for m in self.members], dtype=np.int64)
        clusters = np.array([m.cluster for m in self.members], dtype=np.int64)
        out = np.zeros((c_n, k, self.dim), dtype=np.float64)
        for c in range(c_n):
            in_class = active & (classes == c)
            if not in_class.any():
                raise BankError(
                    f"class {self.class_spec.names[c]!r} has no active bank members, so it has no prototype; "
                    "include excluded members or add patches of that class"
                )
            class_mean = unit[in_class].astype(np.float64).mean(axis=0)
            for j in range(k):
                sel = in_class & (clusters == j)
                if sel.any():
                    out[c, j] = unit[sel].astype(np.float64).mean(axis=0)
                else:
                    logger.warning(
                        "bank class %s sub-cluster %d has no active members; using the class mean",
                        self.class_spec.names[c],
                        j,
                    )
                    out[c, j] = class_mean
        out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
        return torch.from_numpy(out.astype(np.float32))
