"""Image bank (PBIP): single-class patches -> embed -> cosine K-means per class -> curated prototypes.

``build_bank`` makes an ``ImageBank``; ``save_bank`` / ``load_bank`` use a folder with a
human-readable ``manifest.json``; curation functions (``exclude``, ``pin``, ``add_member``,
``recluster``...) return new banks; ``bank.prototypes()`` gives the (C, K, d) prototype tensor.
"""

from __future__ import annotations

from protoseg.lazy import lazy_exports

#: public name -> module, imported on first use (the bank needs torch; a GUI importing this package must not)
_EXPORTS = {
    "BankCurationError": "protoseg.bank.errors",
    "BankError": "protoseg.bank.errors",
    "BankFormatError": "protoseg.bank.errors",
    "BankMember": "protoseg.bank.core",
    "BankSample": "protoseg.bank.core",
    "ClassChange": "protoseg.bank.report",
    "FORMAT_VERSION": "protoseg.bank.store",
    "ImageBank": "protoseg.bank.core",
    "ReclusterReport": "protoseg.bank.report",
    "THUMBNAIL_SIZE": "protoseg.bank.core",
    "WHITE_LEVEL": "protoseg.bank.build",
    "WHITE_THRESHOLD": "protoseg.bank.build",
    "add_from_slide": "protoseg.bank.curation",
    "add_member": "protoseg.bank.curation",
    "bank_manifest": "protoseg.bank.store",
    "build_bank": "protoseg.bank.build",
    "cosine_kmeans": "protoseg.bank.kmeans",
    "embed_images": "protoseg.bank.build",
    "exclude": "protoseg.bank.curation",
    "include": "protoseg.bank.curation",
    "load_bank": "protoseg.bank.store",
    "make_thumbnail": "protoseg.bank.build",
    "pin": "protoseg.bank.curation",
    "recluster": "protoseg.bank.curation",
    "recluster_report": "protoseg.bank.report",
    "recompute_prototypes": "protoseg.bank.curation",
    "save_bank": "protoseg.bank.store",
    "unpin": "protoseg.bank.curation",
    "white_fraction": "protoseg.bank.build",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
