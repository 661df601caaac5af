"""Where the stage-2 encoder starts: the stage-1 checkpoint's trained encoder rather than random init.

Offline (no ImageNet weights, common in hospitals) stage 2 would otherwise start from random init while a
classifier of the same backbone, trained on the same tissue, sits in ``stage1/``. ``stage2.encoder_init``
chooses: ``auto`` (that encoder whenever ``stage2.weights`` give no pretrained weights), ``stage1`` or
``weights``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from protoseg.config import EncoderInit, ProtosegConfig
from protoseg.models.backbone import WeightsInfo, WeightsKind
from protoseg.models.checkpoint import Checkpoint, Stage, load_checkpoint
from protoseg.models.segnet import SegNet
from protoseg.train.errors import TrainingError

logger = logging.getLogger(__name__)

#: the encoder's parameters in a ClassNet / SegNet state dict
_PREFIX = "backbone."


def stage1_checkpoint_of(pseudo_dir: str | Path, stage1_dir: str | Path) -> Path | None:
    """The checkpoint in ``stage1_dir`` (best.pt, then last.pt) whose weights made the pseudo-masks in
    ``pseudo_dir`` (same weights hash as the folder's manifest), or None: never a look-alike."""
    from protoseg.infer.identity import model_sha256
    from protoseg.train.pseudo import MANIFEST

    try:
        wanted = json.loads((Path(pseudo_dir) / MANIFEST).read_text()).get("checkpoint_sha256")
    except (OSError, ValueError):
        return None
    for name in ("best.pt", "last.pt"):
        path = Path(stage1_dir) / name
        if not wanted or not path.is_file():
            continue
        try:
            if model_sha256(load_checkpoint(path).build_model()) == wanted:
                return path
        except Exception as exc:  # noqa: BLE001 - an unreadable candidate is simply not the source
            logger.debug("%s: not a usable stage-1 checkpoint (%s)", path, exc)
    return None


def stage1_source(cfg: ProtosegConfig, pseudo_dir: str | Path) -> Path | None:
    """The stage-1 checkpoint stage 2 may start from when none was given: the one in ``<run.out_dir>/stage1``
    that made the pseudo-masks (None with ``stage2.encoder_init=weights``, which never needs it)."""
    if cfg.stage2.encoder_init is EncoderInit.WEIGHTS:
        return None
    found = stage1_checkpoint_of(pseudo_dir, Path(cfg.run.out_dir) / Stage.STAGE1.value)
    if found is None:
        logger.info("no stage-1 checkpoint in %s made the pseudo-masks in %s", cfg.run.out_dir, pseudo_dir)
    return found


def _stage1_encoder(ckpt: Checkpoint, path: Path, backbone: str) -> dict[str, torch.Tensor]:
    """The encoder weights of stage-1 checkpoint ``ckpt`` (read from ``path``); TrainingError when it is not a
    stage-1 checkpoint of ``backbone``."""
    if ckpt.stage is not Stage.STAGE1:
        raise TrainingError(f"stage2.encoder_init=stage1: {path} is a {ckpt.stage.value} checkpoint, not stage 1")
    theirs = str(ckpt.model_config.get("backbone", ""))
    if theirs != backbone:
        raise TrainingError(
            f"stage2.encoder_init=stage1: {path} has backbone {theirs!r}, stage2.backbone is {backbone!r}; "
            "set stage2.backbone to the stage-1 backbone or stage2.encoder_init=weights"
        )
    return {k[len(_PREFIX) :]: v for k, v in ckpt.state_dict.items() if k.startswith(_PREFIX)}


def _check_fits(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor], path: Path, backbone: str) -> None:
    """TrainingError unless ``state`` has exactly the encoder's tensors, each of the same shape."""
    missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    shapes = [k for k in own.keys() & state.keys() if tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes or not state:
        raise TrainingError(
            f"stage2.encoder_init: the encoder in {path} does not fit stage2.backbone={backbone} "
            f"({len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape); "
            "set stage2.encoder_init=weights"
        )


def init_encoder(net: SegNet, mode: EncoderInit, stage1: str | Path | None) -> WeightsInfo:
    """Load the stage-1 encoder into ``net.backbone`` when ``mode`` asks for it; returns where the encoder's
    weights came from (also set as ``net.backbone.weights_info``)."""
    mode = EncoderInit(mode)
    info = net.weights_info
    if mode is EncoderInit.WEIGHTS:
        return info
    if mode is EncoderInit.AUTO and (info.pretrained or stage1 is None):
        return info
    if stage1 is None:
        raise TrainingError(
            "stage2.encoder_init=stage1 needs the stage-1 checkpoint that made the pseudo-masks; none was given "
            "or found beside them (set stage2.encoder_init=weights to start from stage2.weights)"
        )
    path = Path(stage1)
    ckpt = load_checkpoint(path)
    if mode is EncoderInit.AUTO:
        theirs = ckpt.model_config.get("backbone")
        if theirs != net.config.backbone:  # a deliberate choice of another stage-2 backbone: nothing to say
            logger.info("stage-2 encoder: %s (stage 1 is %s)", info.describe(), theirs)
            return info
    try:
        state = _stage1_encoder(ckpt, path, net.config.backbone)
        _check_fits(state, net.backbone.state_dict(), path, net.config.backbone)
    except TrainingError as exc:
        if mode is EncoderInit.STAGE1:
            raise
        logger.warning("stage-2 encoder: %s (the stage-1 encoder does not fit: %s)", info.describe(), exc)
        return info
    net.backbone.load_state_dict(state)  # checked above: every tensor fits, so nothing is loaded half-way
    new = WeightsInfo(WeightsKind.FILE, net.config.backbone, str(path))
    net.backbone.weights_info = new
    logger.info("stage-2 encoder starts from the stage-1 encoder in %s (%d tensors)", path, len(state))
    return new
