"""Bank curation as pure functions: each returns a new ``ImageBank`` and leaves the input untouched."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable

import numpy as np
import torch

from protoseg.bank.build import embed_images, make_thumbnail
from protoseg.bank.core import BankMember, Box, ImageBank
from protoseg.bank.errors import BankCurationError, BankError
from protoseg.bank.kmeans import cosine_kmeans
from protoseg.models.encoders.base import ImageEncoder
from protoseg.slide.pixels import as_rgb_uint8
from protoseg.slide.resample import SlideLike, read_at_scale

logger = logging.getLogger(__name__)


def _ids(member_ids: str | Iterable[str]) -> list[str]:
    return [member_ids] if isinstance(member_ids, str) else list(member_ids)


def _rows(bank: ImageBank, member_ids: str | Iterable[str]) -> set[int]:
    try:
        return set(bank.index_of(_ids(member_ids)))
    except BankError as exc:
        raise BankCurationError(f"{exc}; use the ids shown in the bank manifest") from exc


def _update(bank: ImageBank, member_ids: str | Iterable[str], **flags: bool) -> ImageBank:
    rows = _rows(bank, member_ids)
    members = tuple(dataclasses.replace(m, **flags) if i in rows else m for i, m in enumerate(bank.members))
    return bank.replace(members=members)


def exclude(bank: ImageBank, member_ids: str | Iterable[str]) -> ImageBank:
    """Mark members as excluded (kept on disk, ignored by prototypes); pinned members must be unpinned first."""
    ids = _ids(member_ids)
    pinned = sorted(bank.members[i].member_id for i in _rows(bank, ids) if bank.members[i].pinned)
    if pinned:
        raise BankCurationError(f"members {pinned} are pinned; unpin them before excluding")
    return _update(bank, ids, excluded=True)


def include(bank: ImageBank, member_ids: str | Iterable[str]) -> ImageBank:
    """Undo ``exclude``."""
    return _update(bank, member_ids, excluded=False)


def pin(bank: ImageBank, member_ids: str | Iterable[str]) -> ImageBank:
    """Pin members: always used for prototypes and never excluded (pinning also re-includes them)."""
    return _update(bank, member_ids, pinned=True, excluded=False)


def unpin(bank: ImageBank, member_ids: str | Iterable[str]) -> ImageBank:
    """Undo ``pin``."""
    return _update(bank, member_ids, pinned=False)


def recompute_prototypes(bank: ImageBank) -> torch.Tensor:
    """(C, K, d) prototypes of the curated bank (same as ``bank.prototypes()``)."""
    return bank.prototypes()


def _next_id(bank: ImageBank) -> str:
    numbers = [int(m.member_id[1:]) for m in bank.members if m.member_id[:1] == "m" and m.member_id[1:].isdigit()]
    n = max(numbers, default=-1) + 1
    taken = {m.member_id for m in bank.members}
    while f"m{n:06d}" in taken:
        n += 1
    return f"m{n:06d}"


def add_member(
    bank: ImageBank,
    image: np.ndarray,
    class_index: int,
    encoder: ImageEncoder,
    source: str = "user",
    box: Box | None = None,
    mpp: float | None = None,
    cluster: int | None = None,
    pinned: bool = False,
) -> ImageBank:
    """Embed a patch (any picture ``protoseg.slide.as_rgb_uint8`` accepts) and append it to a class.

    ``cluster=None`` picks the nearest prototype's.
    """
    if encoder.encoder_id != bank.encoder_id:
        raise BankCurationError(
            f"the bank was built with encoder {bank.encoder_id!r} but {encoder.encoder_id!r} was given; "
            "embed new members with the bank's encoder (or rebuild the bank)"
        )
    if bank.encoder_input_size is not None and int(encoder.input_size) != bank.encoder_input_size:
        raise BankCurationError(
            f"the bank's encoder embeds {bank.encoder_input_size} px images but this one {encoder.input_size} px; "
            "use protoseg.bank.encoder_lookup.encoder_for_bank(bank)"
        )
    if not 0 <= class_index < bank.class_spec.num_classes:
        raise BankCurationError(f"class index {class_index} outside 0..{bank.class_spec.num_classes - 1}")
    if cluster is not None and not 0 <= cluster < bank.k:
        raise BankCurationError(f"cluster {cluster} outside 0..{bank.k - 1}")
    rgb = as_rgb_uint8(image)
    feat = embed_images(encoder, [rgb])[0]
    has_class = any(m.active and m.class_index == class_index for m in bank.members)
    if has_class:
        protos = bank.prototypes()[class_index].numpy()
        sims = protos @ feat
        if cluster is None:
            cluster = int(np.argmax(sims))
        distance = float(1.0 - sims[cluster])
    else:
        cluster = 0 if cluster is None else cluster
        distance = 0.0
    member = BankMember(
        member_id=_next_id(bank),
        class_index=int(class_index),
        cluster=int(cluster),
        source=str(source),
        box=None if box is None else tuple(int(v) for v in box),  # type: ignore[arg-type]
        mpp=None if mpp is None else float(mpp),
        pinned=pinned,
        added_by_user=True,
        distance=float(np.float32(distance)),
    )
    thumb = make_thumbnail(rgb, int(bank.thumbnails.shape[1]))
    logger.info("bank: added %s to class %s cluster %d", member.member_id, bank.class_spec.names[class_index], cluster)
    return bank.replace(
        members=(*bank.members, member),
        features=np.concatenate([bank.features, feat[None].astype(np.float32)]),
        thumbnails=np.concatenate([bank.thumbnails, thumb[None]]),
    )


def add_from_slide(
    bank: ImageBank,
    slide: SlideLike,
    box: Box,
    class_index: int,
    encoder: ImageEncoder,
    mpp: float | None = None,
    cluster: int | None = None,
    pinned: bool = False,
    slide_mpp: float | None = None,
) -> ImageBank:
    """Read level-0 region ``box`` = (x, y, w, h) of a slide (``SlideLike``) and add it as a member.

    When ``mpp`` is given, the region is read at that resolution with ``protoseg.slide.read_at_scale``
    (so it matches patches taken at ``mpp``), using the slide's level-0 mpp or, for files that record
    none, ``slide_mpp`` (the scan resolution the user gave); ``mpp`` is recorded either way.
    Raises ``BankCurationError`` when ``mpp`` is given but the slide's resolution is unknown.
    """
    x, y, w, h = (int(v) for v in box)
    if w <= 0 or h <= 0:
        raise BankCurationError(f"region size must be positive, got w={w}, h={h}")
    file_mpp = getattr(slide, "mpp", None)
    base = file_mpp if isinstance(file_mpp, (int, float)) and file_mpp > 0 else slide_mpp
    size = (w, h)
    if mpp is not None and base is None:
        name = getattr(slide, "path", "the slide")
        raise BankCurationError(
            f"{name} records no microns-per-pixel, so a region cannot be read at the bank's {mpp} µm/px; "
            "give the slide's scan resolution (e.g. 0.25 for 40x, 0.5 for 20x)"
        )
    if mpp is not None and base is not None and abs(base - mpp) > 1e-6:
        scale = float(base) / float(mpp)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = read_at_scale(slide, (x, y, w, h), size)
    source = str(getattr(slide, "path", None) or getattr(slide, "source", None) or "slide")
    return add_member(
        bank,
        rgb,
        class_index,
        encoder,
        source=source,
        box=(x, y, w, h),
        mpp=mpp if mpp is not None else base,
        cluster=cluster,
        pinned=pinned,
    )


def recluster(bank: ImageBank, k: int | None = None, n_iter: int = 50, seed: int = 0) -> ImageBank:
    """Re-run cosine K-means per class over active members (pins kept); excluded ones follow the nearest centre."""
    k = bank.k if k is None else int(k)
    if k < 1:
        raise BankCurationError(f"k must be >= 1, got {k}")
    feats = bank.features / np.maximum(np.linalg.norm(bank.features, axis=1, keepdims=True), 1e-12)
    members = list(bank.members)
    active = bank.active_mask()
    classes = np.array([m.class_index for m in members], dtype=np.int64)
    for c, name in enumerate(bank.class_spec.names):
        act = np.flatnonzero(active & (classes == c))
        if act.size == 0:
            logger.warning("recluster: class %s has no active members; left as is", name)
            continue
        k_c = min(k, act.size)
        if k_c < k:
            logger.warning("recluster: class %s has %d active members; using %d sub-clusters", name, act.size, k_c)
        centers, _ = cosine_kmeans(feats[act], k_c, n_iter=n_iter, seed=seed)
        rows = np.flatnonzero(classes == c)
        sims = feats[rows] @ centers.T
        for r, s in zip(rows, sims):
            j = int(np.argmax(s))
            members[r] = dataclasses.replace(members[r], cluster=j, distance=float(np.float32(1.0 - s[j])))
    return bank.replace(members=tuple(members), k=k)
