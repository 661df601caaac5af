"""Typed, frozen run configuration: defaults, YAML load/save and ``a.b=value`` command-line overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

import yaml

from protoseg.errors import ProtosegError

T = TypeVar("T")


class ConfigError(ProtosegError):
    """A configuration file or override is invalid."""


class Recipe(str, Enum):
    """Stage-1 method: CAM baseline, PBIP (fixed bank prototypes) or LPD (learnable prototypes)."""

    CAM = "cam"
    PBIP = "pbip"
    LPD = "lpd"


class AddOn(str, Enum):
    """Extra stage-1 losses that combine with any recipe."""

    PSCL = "pscl"
    PLIM = "plim"


@dataclass(frozen=True)
class DataConfig:
    """Where the patches are and how they are batched."""

    root: str = ""
    layout: str | None = None  # auto-detected when None
    patch_size: int = 224
    batch_size: int = 8
    num_workers: int = 0
    augment: bool = True
    max_train: int | None = None  # subsample training patches (quick runs)
    max_val: int | None = None


@dataclass(frozen=True)
class EncoderConfig:
    """Frozen image(/text) encoder used by the bank and the prototype losses."""

    kind: str = "descriptor"  # descriptor | open_clip | timm
    model_name: str = ""
    pretrained: str | None = None
    input_size: int | None = None  # None: the patch size for the descriptor, the model's own for open_clip/timm


@dataclass(frozen=True)
class BankConfig:
    """Image bank: location, encoder and clustering (PBIP defaults K=3, N_K=100)."""

    path: str | None = None
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    k: int = 3
    n_per_cluster: int = 100
    white_threshold: float = 0.7


@dataclass(frozen=True)
class ModelConfig:
    """Stage-1 network (ClassNet)."""

    backbone: str = "pvt_v2_b1"
    weights: str | None = None  # None: random init; "hub"; or a local file
    learnable_k: int = 10  # LPD prototypes per class
    projector_hidden: int = 256
    background_score: float = 0.25


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 optimisation and loss weights (defaults from PBIP / LPD / PSCL / PLIMSeg)."""

    recipe: Recipe = Recipe.PBIP
    addons: tuple[AddOn, ...] = ()
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    stage_weights: tuple[float, ...] = (0.0, 0.1, 1.0, 1.0)
    fusion_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    cls_weight: float = 1.0
    sim_weight: float = 0.5
    fg_weight: float = 1.0
    bg_weight: float = 0.5
    delta: float = 0.5
    max_pairs: int = 16  # FG/BG (image, class) pairs encoded per batch (0 = all); bounds encoder cost
    temperature: float = 0.1
    cam_area_weight: float = 0.0
    diversity_weight: float = 0.5
    diversity_warmup_epochs: float = 1.0
    diversity_temperature: float = 0.1  # softmax over pixel cosines in the Jeffrey penalty
    pscl_weight: float = 0.1
    pscl_tau: float = 0.25
    pscl_temperature: float = 0.1
    pscl_max_pixels: int = 1024
    plim_weights: tuple[float, float, float] = (10.0, 24.0, 1.0)
    plim_template: str = "a histopathology image of {}"
    score_gate: float = 0.8
    bg_threshold: float = 0.25  # pseudo-label background where max CAM is below this
    bg_grey: float = 0.8  # colour background seed: grey level in [0,1]
    bg_min_size: int = 300


@dataclass(frozen=True)
class Stage2Config:
    """Stage-2 segmentation network trained on pseudo-masks."""

    backbone: str = "pvt_v2_b1"
    weights: str | None = None
    decoder_dim: int = 128
    epochs: int = 10
    lr: float = 2e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    noise_reduced: bool = True
    tta: bool = False


@dataclass(frozen=True)
class RunConfig:
    """Run-wide settings: output folder, device, seeding, AMP."""

    out_dir: str = "runs/protoseg"
    device: str = "auto"
    seed: int = 0
    amp: bool = True
    mpp: float | None = None  # input resolution of the patches (from names/dataset when None)
    log_every: int = 10


@dataclass(frozen=True)
class ProtosegConfig:
    """Everything a training run needs; saved into each checkpoint."""

    data: DataConfig = field(default_factory=DataConfig)
    bank: BankConfig = field(default_factory=BankConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    stage1: Stage1Config = field(default_factory=Stage1Config)
    stage2: Stage2Config = field(default_factory=Stage2Config)
    run: RunConfig = field(default_factory=RunConfig)


def to_dict(cfg: Any) -> Any:
    """Dataclass tree -> plain YAML/JSON-safe containers (enums as values, tuples as lists)."""
    if dataclasses.is_dataclass(cfg):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}
    if isinstance(cfg, Enum):
        return cfg.value
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    return cfg


def _coerce(tp: Any, value: Any, where: str) -> Any:
    """Convert a plain value to the annotated type, with a clear error naming the key."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is tuple:
        args = typing.get_args(tp)
        if isinstance(value, str):
            value = [v for v in value.replace(" ", "").split(",") if v]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, where) for v in value)
        if len(args) != len(value):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(_coerce(a, v, where) for a, v in zip(args, value))
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, f"{where}.")
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            raise ConfigError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from None
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp in (int, float):
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{where}: expected text, got {value!r}")
        return str(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) config dataclass from a mapping; unknown keys are errors (typos)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}; valid keys here: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)  # type: ignore[call-arg]


def _parse_scalar(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(cfg: ProtosegConfig, overrides: list[str]) -> ProtosegConfig:
    """Apply ``section.key=value`` strings (YAML-parsed values) on top of a config."""
    data = to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value (e.g. stage1.epochs=3)")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if part not in node or not isinstance(node[part], dict):
                raise ConfigError(f"override {item!r}: no config section {part!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"override {item!r}: unknown key {parts[-1]!r}; valid: {sorted(node)}")
        node[parts[-1]] = _parse_scalar(raw)
    return from_dict(ProtosegConfig, data)


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> ProtosegConfig:
    """Defaults, then the YAML file (if any), then overrides."""
    cfg = ProtosegConfig()
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections (data, model, stage1, ...)")
        cfg = from_dict(ProtosegConfig, data)
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: ProtosegConfig, path: str | Path) -> None:
    """Write the full resolved config as YAML (reproducibility)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
