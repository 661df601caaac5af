"""The image bank a stage-1 run uses: built from the training patches (recording their resampling) or
loaded, with the frozen encoder the prototype losses need, and a warning when its resolution differs."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from protoseg.config import ProtosegConfig, Recipe
from protoseg.train.data_setup import TrainingData, folder_data
from protoseg.train.stage1 import encoder_from_config

logger = logging.getLogger(__name__)


def iter_bank_samples(ds: Dataset, mpp: float | None) -> Iterator[Any]:
    """Training patches as bank samples (uint8 images + multi-hot labels + their file or slide box)."""
    from protoseg.bank import BankSample

    records = getattr(ds, "records", None)
    for i in range(len(ds)):  # type: ignore[arg-type]
        if records is not None:  # folder patches: read the file itself (no augmentation)
            label = tuple(int(v) for v in ds.label(i))  # type: ignore[attr-defined]
            image = ds.image(i)  # type: ignore[attr-defined]  # resampled by data.scale, as training sees it
            yield BankSample(image=image, label=label, source=str(records[i].image), box=None, mpp=mpp)
            continue
        patch = ds.patches[i]  # type: ignore[attr-defined]
        yield BankSample(
            image=ds.read_patch(i),
            label=tuple(int(v) for v in patch.label),  # type: ignore[attr-defined]
            source=patch.slide_path,
            box=tuple(patch.box),
            mpp=mpp,
        )


def _folder_scale(cfg: ProtosegConfig, data: TrainingData) -> float | None:
    """``data.scale`` when the training patches come from a folder (it resamples them), else None."""
    return cfg.data.scale if getattr(data.train, "records", None) is not None else None


def build_bank_from_config(
    cfg: ProtosegConfig,
    out: str | Path,
    encoder: Any | None = None,
    data: TrainingData | None = None,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> Any:
    """Build the image bank from the single-class training patches and save it to ``out``;
    ``progress(seen, total)`` after each embedded batch. ``out`` must be free, empty or a bank protoseg
    wrote, or with ``overwrite`` another protoseg output (checked before encoding)."""
    from protoseg.bank import build_bank, save_bank
    from protoseg.bank.store import check_bank_output

    check_bank_output(out, overwrite)

    if data is None:
        data = folder_data(cfg, augment=False)
    encoder = encoder or encoder_from_config(cfg)
    total = len(data.train)  # type: ignore[arg-type]
    bank = build_bank(
        iter_bank_samples(data.train, data.mpp),
        data.classes,
        encoder,
        k=cfg.bank.k,
        n_per_cluster=cfg.bank.n_per_cluster,
        white_threshold=cfg.bank.white_threshold,
        progress=(lambda seen: progress(seen, total)) if progress is not None else None,
        data_scale=_folder_scale(cfg, data),
    )
    save_bank(bank, out, overwrite=overwrite)
    logger.info("image bank with %d members saved to %s", len(bank.members), out)
    return bank


def with_default_bank(cfg: ProtosegConfig) -> ProtosegConfig:
    """PBIP without ``bank.path``: use ``<out_dir>/bank`` (built there when absent) so checkpoints record it."""
    if cfg.stage1.recipe is Recipe.PBIP and not cfg.bank.path:
        return replace(cfg, bank=replace(cfg.bank, path=str(Path(cfg.run.out_dir) / "bank")))
    return cfg


def bank_and_encoder(cfg: ProtosegConfig, data: TrainingData) -> tuple[Any | None, Any | None]:
    """The bank at ``bank.path`` (for PBIP built there from the training patches when absent) and the
    encoder stage 1 needs: the bank's own, at the input size the bank records, whatever the patch size."""
    from protoseg.bank import load_bank

    needs_encoder = cfg.stage1.recipe is not Recipe.CAM or bool(cfg.stage1.addons)
    bank = None
    if cfg.stage1.recipe is not Recipe.CAM and cfg.bank.path and Path(cfg.bank.path).exists():
        bank = load_bank(cfg.bank.path)
        why = bank.resolution_mismatch(_folder_scale(cfg, data), data.mpp)
        if why:
            logger.warning(
                "image bank %s: %s, so its prototypes describe other pixel sizes than the training crops; "
                "rebuild it at the training resolution (protoseg bank build --set data.scale=%g; Image bank dock: "
                "'Folder patches × (resample)')",
                cfg.bank.path,
                why,
                cfg.data.scale,
            )
    elif cfg.stage1.recipe is Recipe.PBIP:
        logger.info("no image bank at %s: building one from the training patches", cfg.bank.path)
        encoder = encoder_from_config(cfg)
        return build_bank_from_config(cfg, cfg.bank.path, encoder, data), encoder
    return bank, (encoder_from_config(cfg, bank) if needs_encoder else None)


__all__ = ["bank_and_encoder", "build_bank_from_config", "iter_bank_samples", "with_default_bank"]
