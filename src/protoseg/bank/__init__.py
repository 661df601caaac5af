"""Image bank (PBIP): single-class patches -> embed -> cosine K-means per class -> curated prototypes.

``build_bank`` makes an ``ImageBank``; ``save_bank`` / ``load_bank`` use a folder with a
human-readable ``manifest.json``; curation functions (``exclude``, ``pin``, ``add_member``,
``recluster``...) return new banks; ``bank.prototypes()`` gives the (C, K, d) prototype tensor.
"""

from __future__ import annotations

from protoseg.bank.build import WHITE_LEVEL, WHITE_THRESHOLD, build_bank, embed_images, make_thumbnail, white_fraction
from protoseg.bank.core import THUMBNAIL_SIZE, BankMember, BankSample, ImageBank
from protoseg.bank.curation import (
    add_from_slide,
    add_member,
    exclude,
    include,
    pin,
    recluster,
    recompute_prototypes,
    unpin,
)
from protoseg.bank.errors import BankCurationError, BankError, BankFormatError
from protoseg.bank.kmeans import cosine_kmeans
from protoseg.bank.store import FORMAT_VERSION, bank_manifest, load_bank, save_bank

__all__ = [
    "FORMAT_VERSION",
    "THUMBNAIL_SIZE",
    "WHITE_LEVEL",
    "WHITE_THRESHOLD",
    "BankCurationError",
    "BankError",
    "BankFormatError",
    "BankMember",
    "BankSample",
    "ImageBank",
    "add_from_slide",
    "add_member",
    "bank_manifest",
    "build_bank",
    "cosine_kmeans",
    "embed_images",
    "exclude",
    "include",
    "load_bank",
    "make_thumbnail",
    "pin",
    "recluster",
    "recompute_prototypes",
    "save_bank",
    "unpin",
    "white_fraction",
]
