"""One-file model checkpoints: weights + everything a prediction needs, written atomically."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any

import torch

from protoseg.classes import ClassSpec
from protoseg.errors import ProtosegError
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1


class CheckpointError(ProtosegError):
    """A checkpoint file is missing, damaged or not a protoseg checkpoint."""


class Stage(str, Enum):
    """Which network a checkpoint holds."""

    STAGE1 = "stage1"
    STAGE2 = "stage2"


@dataclass(frozen=True)
class Checkpoint:
    """Weights, model config, classes, input mpp/patch size and normalisation of a trained model.

    ``model_config`` is the plain dict accepted by ``protoseg.models.build_model`` so a checkpoint
    rebuilds its network without any other file. ``extra`` holds optimiser/scheduler state for
    resuming and free-form provenance (bank path, dataset, recipe).
    """

    stage: Stage
    model_config: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    classes: ClassSpec
    mpp: float | None = None
    patch_size: int = 224
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    train_config: dict[str, Any] = field(default_factory=dict)
    epoch: int = 0
    step: int = 0
    best_metric: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def with_updates(self, **changes: Any) -> Checkpoint:
        """Copy with some fields replaced (dataclass is frozen)."""
        return replace(self, **changes)

    def to_payload(self) -> dict[str, Any]:
        """Plain containers + tensors only, so ``torch.load(weights_only=True)`` can read it."""
        return {
            "format": "protoseg-checkpoint",
            "format_version": FORMAT_VERSION,
            "stage": self.stage.value,
            "model_config": self.model_config,
            "state_dict": self.state_dict,
            "classes": self.classes.to_dict(),
            "mpp": self.mpp,
            "patch_size": int(self.patch_size),
            "mean": list(self.mean),
            "std": list(self.std),
            "train_config": self.train_config,
            "epoch": int(self.epoch),
            "step": int(self.step),
            "best_metric": self.best_metric,
            "metrics": dict(self.metrics),
            "extra": self.extra,
        }

    @classmethod
    def from_payload(cls, payload: dict[str, Any], source: str = "<memory>") -> Checkpoint:
        if not isinstance(payload, dict) or payload.get("format") != "protoseg-checkpoint":
            raise CheckpointError(
                f"{source} is not a protoseg checkpoint (no 'format: protoseg-checkpoint' key); "
                "train one with `protoseg train stage1|stage2` or pick the .pt file it wrote."
            )
        version = payload.get("format_version", 0)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source} has checkpoint format {version}, newer than this protoseg ({FORMAT_VERSION}); "
                "upgrade protoseg."
            )
        try:
            return cls(
                stage=Stage(payload["stage"]),
                model_config=dict(payload["model_config"]),
                state_dict=dict(payload["state_dict"]),
                classes=ClassSpec.from_dict(payload["classes"]),
                mpp=payload.get("mpp"),
                patch_size=int(payload.get("patch_size", 224)),
                mean=tuple(payload.get("mean", IMAGENET_MEAN)),
                std=tuple(payload.get("std", IMAGENET_STD)),
                train_config=dict(payload.get("train_config", {})),
                epoch=int(payload.get("epoch", 0)),
                step=int(payload.get("step", 0)),
                best_metric=payload.get("best_metric"),
                metrics=dict(payload.get("metrics", {})),
                extra=dict(payload.get("extra", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{source} is an incomplete protoseg checkpoint ({exc!r}); re-export it.") from exc

    def build_model(self, strict: bool = True) -> torch.nn.Module:
        """Rebuild the network from ``model_config`` and load the weights (eval mode)."""
        from protoseg.models import build_model

        model = build_model(self.model_config)
        try:
            model.load_state_dict(self.state_dict, strict=strict)
        except RuntimeError as exc:
            raise CheckpointError(
                f"checkpoint weights do not match its model config ({exc}); the file is damaged or was edited by hand."
            ) from exc
        model.eval()
        return model


def save_checkpoint(ckpt: Checkpoint, path: str | os.PathLike[str]) -> Path:
    """Write atomically: serialise to a temp file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    torch.save(ckpt.to_payload(), buf)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buf.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    logger.debug("saved checkpoint %s (%d bytes)", path, buf.tell())
    return path


def _damaged(path: Path, exc: BaseException) -> str:
    return (
        f"checkpoint {path} cannot be read ({type(exc).__name__}); the file is truncated or damaged: "
        "use another copy or re-run training (it resumes from last.pt)."
    )


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with ``weights_only=True`` (no arbitrary code) and validate; clear errors for bad files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by training.")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)|Unsupported class (\S+)", str(exc))
        if found is None:
            raise CheckpointError(_damaged(path, exc)) from None
        # torch's message suggests retrying with weights_only=False: that would run the file's code
        raise CheckpointError(
            f"checkpoint {path} holds executable Python objects ({found.group(1) or found.group(2)}), not only "
            "tensors and plain data, so it will not be loaded: loading it could run arbitrary code. "
            "Use a checkpoint written by protoseg training."
        ) from None
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(exc).__name__}: {str(exc)[:200]}); the file is "
            "truncated or damaged: use another copy or re-run training (it resumes from last.pt)."
        ) from exc
    return Checkpoint.from_payload(payload, source=str(path))
