"""One-file model checkpoints: weights + everything a prediction needs, written atomically."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import IO, Any

import torch

from protoseg.classes import ClassSpec
from protoseg.config_ranges import MPP, RANGES, check_value
from protoseg.errors import ProtosegError
from protoseg.models.normalization import IMAGENET_MEAN, IMAGENET_STD
from protoseg.outputs import atomic_write_bytes

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
    metrics: dict[str, Any] = field(default_factory=dict)  # floats, and ``selection_metric``: the name best.pt used
    extra: dict[str, Any] = field(default_factory=dict)

    def with_updates(self, **changes: Any) -> Checkpoint:
        """Copy with some fields replaced (dataclass is frozen)."""
        return replace(self, **changes)

    @property
    def data_scale(self) -> float:
        """The ``data.scale`` its training patches were resampled by: patch folders are evaluated and given
        pseudo-masks at it (1 for slide regions and checkpoints written before the setting)."""
        data = self.train_config.get("data") if isinstance(self.train_config, dict) else None
        value = data.get("scale", 1.0) if isinstance(data, dict) else 1.0
        try:
            scale = float(value)
        except (TypeError, ValueError):
            return 1.0
        return 1.0 if RANGES["data.scale"].problem(scale) else scale  # outside data.scale's range: not ours

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
                mpp=_checked_mpp(payload.get("mpp"), source),
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
        from protoseg.models.backbone import weights_from_checkpoint

        with weights_from_checkpoint(f"{self.stage.value} checkpoint (epoch {self.epoch})"):
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
    """Write atomically: serialise to a temp file in the same folder, fsync, then rename over ``path``
    (``protoseg.outputs.atomic_write_bytes``: the umask's permissions; a link at ``path`` is replaced, not followed)."""
    path = Path(path)
    buf = io.BytesIO()
    torch.save(ckpt.to_payload(), buf)
    atomic_write_bytes(path, buf.getbuffer())
    logger.debug("saved checkpoint %s (%d bytes)", path, buf.tell())
    return path


def _damaged(path: Path, detail: str) -> str:
    return (
        f"checkpoint {path} cannot be read ({detail}); the file is truncated or damaged: use another copy or "
        "re-run training (it resumes from last.pt)."
    )


#: What torch's weights-only unpickler names when it meets anything but tensors and plain data (any version).
_REFUSED = re.compile(
    r"Unsupported global: GLOBAL (\S+)"
    r"|unsupported GLOBAL (\S+) whose module"
    r"|Unsupported class (\S+)"
    r"|unrecognized function (.+?)(?: which belongs|$)"
    r"|Can only (?:create new object|build)[^\n]* but got (.+)",
    re.MULTILINE,
)
_DOTTED = re.compile(r"[A-Za-z_][\w.]*")


def _allowed_globals() -> set[str]:
    """Names torch's weights-only loading accepts (tensor rebuilders, OrderedDict...); empty if torch hides them."""
    try:
        from torch._weights_only_unpickler import _get_allowed_globals

        return set(_get_allowed_globals())
    except Exception:  # noqa: BLE001 - a private helper: without it every import counts as code
        return set()


_STRING_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"}


def _pickled_globals(stream: IO[bytes], limit: int = 3) -> list[str]:
    """Python names a pickle imports beyond torch's allowed ones, found by disassembling it (nothing runs)."""
    import pickletools

    allowed, names = _allowed_globals(), []
    memo: dict[int, Any] = {}
    pushed: list[Any] = [None, None]  # the last two values pushed (strings, else None)
    try:
        for op, arg, _ in pickletools.genops(stream):
            name = None
            if op.name == "MEMOIZE":
                memo[len(memo)] = pushed[-1]
                continue
            if op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                memo[int(arg)] = pushed[-1]
                continue
            if op.name in ("GLOBAL", "INST"):
                name = str(arg).replace(" ", ".")
            elif op.name == "STACK_GLOBAL" and all(isinstance(v, str) for v in pushed):
                name = ".".join(pushed)
            value = memo.get(int(arg)) if op.name in ("GET", "BINGET", "LONG_BINGET") else None
            pushed = [pushed[-1], arg if op.name in _STRING_OPS else value]
            if name and _DOTTED.fullmatch(name) and name not in allowed and name not in names:
                names.append(name)
            if len(names) >= limit:
                break
    except Exception:  # noqa: BLE001 - garbage ends the disassembly; the names found so far stand
        pass
    return names


def _refused_objects(path: Path, exc: BaseException) -> str | None:
    """The executable objects weights-only loading rejected in ``path`` (e.g. ``posix.system``), or None when
    the failure is damage rather than code."""
    found = _REFUSED.search(str(exc))
    if found is not None:
        return next(g for g in found.groups() if g).strip()
    if "Unsupported operand" not in str(exc):
        return None
    # a pickle protocol the safe loader cannot parse: list what it would import, without running it
    names: list[str] = []
    try:
        if zipfile.is_zipfile(path):  # torch.save's format: the pickle is the archive's data.pkl
            with zipfile.ZipFile(path) as zf:
                member = next((n for n in zf.namelist() if n.endswith("data.pkl")), None)
                if member is not None:
                    with zf.open(member) as fh:
                        names = _pickled_globals(fh)
        else:
            with path.open("rb") as fh:
                names = _pickled_globals(fh)
    except (OSError, zipfile.BadZipFile, RuntimeError):
        return None
    return ", ".join(names) or None


def _unsafe(path: Path, objects: str) -> str:
    return (
        f"checkpoint {path} was refused as unsafe: it holds executable Python objects ({objects}), not only "
        "tensors and plain data, and weights-only loading rejected them; loading it could run arbitrary code, "
        "so it will not be loaded. Use a checkpoint written by protoseg training."
    )


def non_finite_weight(state_dict: dict[str, Any]) -> str | None:
    """Name of the first floating-point weight holding NaN or infinity, or None when all are finite."""
    for name, value in state_dict.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return name
    return None


def _checked_mpp(value: Any, source: str) -> float | None:
    """The checkpoint's input mpp when it is a number in ``config_ranges.MPP`` (None: unknown), else CheckpointError."""
    if value is None:
        return None
    hint = "the file is damaged or was edited: use the checkpoint training wrote, or train again with run.mpp set"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"{source}: mpp={value!r} is not a number; {hint}")
    check_value(f"{source}: mpp", value, MPP, CheckpointError, hint)
    return float(value)


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load with ``weights_only=True`` (no arbitrary code) and validate; clear errors for bad files, code
    (refused as unsafe) and NaN/infinite weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass the .pt file written by training.")
    try:
        with warnings.catch_warnings():  # torch's multi-line pickle-protocol warning: the errors below say more
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        objects = _refused_objects(path, exc)
        # torch's message suggests retrying with weights_only=False: that would run the file's code
        raise CheckpointError(_unsafe(path, objects) if objects else _damaged(path, "UnpicklingError")) from None
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(_damaged(path, f"{type(exc).__name__}: {str(exc)[:200]}")) from exc
    ckpt = Checkpoint.from_payload(payload, source=str(path))
    bad = non_finite_weight(ckpt.state_dict)
    if bad is not None:
        raise CheckpointError(
            f"checkpoint {path} has NaN or infinite weights ({bad}), so every prediction would be wrong: the "
            "training that wrote it diverged; use an earlier checkpoint (best.pt) or train again (e.g. a lower lr)."
        )
    return ckpt
