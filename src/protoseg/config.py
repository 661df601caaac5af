"""Typed, frozen run configuration: defaults, YAML load/save and ``a.b=value`` command-line overrides."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from protoseg.cam_norm import CamNorm
from protoseg.config_compat import STAGE1_RENAMED, drop_removed, upgrade_keys
from protoseg.config_overrides import override_mapping
from protoseg.config_ranges import check_ranges
from protoseg.errors import ProtosegError

if TYPE_CHECKING:
    from protoseg.data.records import Layout
    from protoseg.models.encoders.spec import EncoderKind

T = TypeVar("T")
E = TypeVar("E", bound=Enum)


class ConfigError(ProtosegError):
    """A configuration file or override is invalid."""


class Recipe(str, Enum):
    """Stage-1 method: CAM baseline, PBIP (fixed bank prototypes) or LPD (learnable prototypes)."""

    CAM = "cam"
    PBIP = "pbip"
    LPD = "lpd"


class EncoderInit(str, Enum):
    """Where the stage-2 encoder starts: ``stage2.weights`` only, the stage-1 checkpoint's trained encoder,
    or (auto) the stage-1 encoder whenever ``stage2.weights`` would leave it at random init."""

    AUTO = "auto"
    WEIGHTS = "weights"
    STAGE1 = "stage1"


class Sampling(str, Enum):
    """How training draws its patches each epoch: every patch once (uniform), or with replacement so that each
    image-level class is drawn about equally often (balanced: a patch's weight is 1 / the share of training
    patches holding its rarest class)."""

    UNIFORM = "uniform"
    BALANCED = "balanced"


class WarmStart(str, Enum):
    """Self-supervised warm start of the stage-1 backbone when it has no pretrained weights (``train.warm_start``):
    none, or SimCLR on the unlabelled training patches."""

    NONE = "none"
    SIMCLR = "simclr"


class RegionMasking(str, Enum):
    """How PBIP's foreground / background regions reach the frozen encoder: the masked image M*X (fill: the
    paper's X_FG, black outside the region) or the whole image with the region as per-pixel weights of the
    encoder's statistics (weights: the built-in descriptor; other encoders fall back to fill)."""

    FILL = "fill"
    WEIGHTS = "weights"


class AddOn(str, Enum):
    """Extra stage-1 losses that combine with any recipe."""

    PSCL = "pscl"
    PLIM = "plim"


def _home_enums() -> dict[str, type[Enum]]:
    """``EncoderKind`` and ``Layout`` from their own modules, imported on first use: both packages import
    torch, which ``import protoseg.config`` (and so the CLI's argument parser) should not."""
    from protoseg.data.records import Layout
    from protoseg.models.encoders.spec import EncoderKind

    return {"EncoderKind": EncoderKind, "Layout": Layout}


def _to_enum(tp: type[E], value: Any, where: str) -> E:
    """``tp(value)`` or a one-line ConfigError naming the key and the allowed values."""
    try:
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {value!r} is not one of {[m.value for m in tp]}") from None


def _set_home_enum(obj: Any, name: str, enum_name: str, where: str) -> None:
    """Parse a (frozen) dataclass field given as text into its enum; None stays None."""
    value = getattr(obj, name)
    if value is not None:
        object.__setattr__(obj, name, _to_enum(_home_enums()[enum_name], value, where))


#: Backbone families timm builds for one input size (``data.patch_size`` x ``data.scale``); the others take any.
FIXED_SIZE_BACKBONES = ("swin", "vit")


def fixed_input_size(cfg: ProtosegConfig, backbone: str) -> int | None:
    """The one input side ``backbone`` is built for (a swin / ViT: the patch size after ``data.scale``), else None."""
    if not backbone.startswith(FIXED_SIZE_BACKBONES):
        return None
    return max(16, round(cfg.data.patch_size * cfg.data.scale))


@dataclass(frozen=True)
class DataConfig:
    """Where the patches are and how they are batched."""

    root: str = ""
    layout: Layout | None = None  # protoseg.data.records.Layout; auto-detected when None
    patch_size: int = 224
    # patch folders: images and masks resampled by this factor before the model sees them (0.5 = half the
    # resolution: 4x cheaper steps, twice the tissue per receptive field); the model's µm/px is the files' / scale.
    # Tagged slide regions are read at run.mpp instead (1 only)
    scale: float = 1.0
    batch_size: int = 8
    num_workers: int | None = None  # None: chosen from the machine (protoseg.runtime.default_num_workers)
    augment: bool = True
    augment_on_device: bool = True  # stain jitter batched on the training device (else per image in the dataset)
    max_train: int | None = None  # subsample training patches (quick runs)
    max_val: int | None = None

    def __post_init__(self) -> None:
        _set_home_enum(self, "layout", "Layout", "data.layout")


@dataclass(frozen=True)
class EncoderConfig:
    """Frozen image(/text) encoder used by the bank and the prototype losses."""

    kind: EncoderKind = "descriptor"  # type: ignore[assignment]  # an EncoderKind once constructed
    model_name: str = ""
    pretrained: str | None = None
    input_size: int | None = None  # None: the patch size for the descriptor, the model's own for open_clip/timm

    def __post_init__(self) -> None:
        _set_home_enum(self, "kind", "EncoderKind", "bank.encoder.kind")


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
    weights: str | None = "auto"  # auto: ImageNet (cache/download, else random + warning); hub; a file; null: random
    output_stride: int = 16  # stage-4 stride: 16 as in PBIP (14x14 CAMs at 224 px) or 32
    learnable_k: int = 10  # LPD prototypes per class
    projector_hidden: int = 256


@dataclass(frozen=True)
class SimilarityConfig:
    """FG/BG prototype similarity L_SIM of PBIP (bank prototypes) and LPD (learnable prototypes)."""

    weight: float = 0.5  # b in a*L_CLS + b*L_SIM
    # weights: the descriptor of a region from its own pixels; with a black fill every masked crop of real lung
    # tissue sat nearest the tumour prototypes (docs/interfaces.md)
    masking: RegionMasking = RegionMasking.WEIGHTS
    fg_weight: float = 1.0
    bg_weight: float = 0.5
    temperature: float = 0.1


@dataclass(frozen=True)
class LpdConfig:
    """LPD prototype-diversity regulariser, switched on after a warm-up."""

    diversity_weight: float = 0.5
    diversity_warmup_epochs: float = 1.0
    diversity_temperature: float = 1.0  # softmax over pixel cosines in the Jeffrey penalty (LPD code: 1.0)


@dataclass(frozen=True)
class PsclConfig:
    """PSCL add-on: pixel supervised-contrastive loss with CAM pseudo-labels, on stage-3 features or on a
    light FPN pixel decoder over stages 2-4 (``decoder``; on in the pscl-bcss preset)."""

    weight: float = 0.1
    tau: float = 0.25
    temperature: float = 0.1
    max_pixels: int = 1024
    decoder: bool = False  # contrast the output of a light FPN pixel decoder over stages 2-4 (PSCL thesis)
    decoder_dim: int = 128  # channels of that decoder


@dataclass(frozen=True)
class PlimConfig:
    """PLIM add-on: image-text losses L_TTP/L_BTP/L_TBP with class prompts."""

    weights: tuple[float, float, float] = (10.0, 24.0, 1.0)
    template: str = "a histopathology image of {}"
    descriptions: tuple[str, ...] = ()  # "KEY=full name" prompt words; default table: TUM=tumor, LYM=lymphocytic ...


@dataclass(frozen=True)
class PseudoLabelConfig:
    """CAM -> pseudo-mask rules (stage-1 validation, pseudo-mask export, PSCL labels): argmax over the
    gated classes (PBIP); uncertain pixels -> 255 (ignore); background only from the glass detector."""

    ignore_below: float = 0.05  # tau: pixels choosing among >= 2 classes with max CAM <= tau -> 255
    tie_margin: float = 0.02  # ... or whose best-minus-second CAM is below this -> 255
    glass: bool = True  # background from protoseg.slide.glass (False: no background class at all)
    bg_open_radius: float = 0.03  # glass narrower than this disc (fraction of patch side) stays tissue
    bg_min_size: int = 300  # glass regions smaller than this (pixels) stay tissue
    # CAM scaling before the labelled classes compete: joint (one scale, the classifier's own ranking, as
    # stage1.label_free_cams) or per_class min-max (PBIP's rule; on real tissue it gave TE 11 % IoU, docs/interfaces.md)
    cams: CamNorm = CamNorm.JOINT
    # input scales whose stage CAMs are averaged (multi-scale CAM inference, as AffinityNet / PBIP test time);
    # (1.0,) = one pass. Pseudo-mask export and eval --use-labels; stage-1 validation stays one pass
    scales: tuple[float, ...] = (1.0,)

    def __post_init__(self) -> None:
        if not self.scales:
            raise ConfigError("stage1.pseudo.scales needs at least one input scale, e.g. [1.0] or [1.0, 1.5, 2.0]")


@dataclass(frozen=True)
class Stage1Config:
    """Stage-1 optimisation and loss weights (defaults from PBIP / LPD / PSCL / PLIMSeg).

    Settings every recipe uses sit at the top; each method's own settings are in its section.
    """

    recipe: Recipe = Recipe.PBIP
    addons: tuple[AddOn, ...] = ()
    # balanced: patches of rare image-level classes drawn as often as common ones (real lung tissue: label-free
    # +5 to +17 points, docs/interfaces.md); uniform: each patch once per epoch (the papers' presets)
    sampling: Sampling = Sampling.BALANCED
    # simclr: a backbone without pretrained weights first learns from the unlabelled training patches
    # (protoseg.train.warm_start; skipped for pretrained weights); off by default: on real lung tissue stage 2
    # rose on the mean but fell on 1 of 3 seeds and tumour epithelium fell (docs/interfaces.md)
    warm_start: WarmStart = WarmStart.NONE
    warm_start_steps: int = 400
    warm_start_batch: int = 32  # patches per step (two views each)
    epochs: int = 10
    lr: float = 1e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    stage_weights: tuple[float, ...] = (0.0, 0.1, 1.0, 1.0)
    fusion_weights: tuple[float, ...] = (0.3, 0.3, 0.4)
    score_gate: float = 0.8
    # label-free prediction: CAMs of the kept classes on one scale (joint: the classifier's own ranking between
    # classes) or each min-max to [0, 1] (per_class, the pseudo-mask rule); docs/interfaces.md
    label_free_cams: CamNorm = CamNorm.JOINT
    cls_weight: float = 1.0
    cam_area_weight: float = 0.0
    delta: float = 0.5  # adaptive CAM mask threshold for the FG/BG images (similarity and plim)
    max_pairs: int = 16  # FG/BG (image, class) pairs encoded per batch (0 = all); bounds encoder cost
    similarity: SimilarityConfig = field(default_factory=SimilarityConfig)
    lpd: LpdConfig = field(default_factory=LpdConfig)
    pscl: PsclConfig = field(default_factory=PsclConfig)
    plim: PlimConfig = field(default_factory=PlimConfig)
    pseudo: PseudoLabelConfig = field(default_factory=PseudoLabelConfig)


@dataclass(frozen=True)
class Stage2Config:
    """Stage-2 segmentation network trained on pseudo-masks."""

    backbone: str = "pvt_v2_b1"
    weights: str | None = "auto"  # as model.weights
    decoder_dim: int = 128
    sampling: Sampling = Sampling.UNIFORM  # as stage1.sampling; balanced measured worse here (docs/interfaces.md)
    epochs: int = 10
    lr: float = 2e-4
    weight_decay: float = 1e-2
    grad_clip: float = 1.0
    noise_reduced: bool = False  # True: CE weighted 1 + confidence (confident pixels up); default plain CE
    tta: bool = False
    # auto: the stage-1 checkpoint's encoder (same backbone) when stage2.weights give no pretrained weights
    # (offline, random); stage1: always; weights: stage2.weights only (docs/interfaces.md)
    encoder_init: EncoderInit = EncoderInit.AUTO


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

    def __post_init__(self) -> None:
        check_ranges(self, ConfigError)
        scales = self.stage1.pseudo.scales
        if tuple(scales) != (1.0,) and self.model.backbone.startswith(FIXED_SIZE_BACKBONES):
            raise ConfigError(
                f"stage1.pseudo.scales={list(scales)} needs a backbone that takes any input size (resnet, convnext, "
                f"pvt_v2); model.backbone={self.model.backbone} is built for one size: use stage1.pseudo.scales=[1.0]"
            )


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
        return _to_enum(tp, value, where)
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


#: Per config class, its renamed keys (old flat name -> "section.name").
_RENAMED: dict[type, dict[str, str]] = {Stage1Config: STAGE1_RENAMED}


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) config dataclass from a mapping; unknown keys are errors (typos), renamed keys
    of older configs are moved to their new place with a deprecation warning."""
    if cls in _RENAMED:
        data = upgrade_keys(data, _RENAMED[cls], where, ConfigError)
    data = drop_removed(data, where)
    hints = typing.get_type_hints(cls, localns=_home_enums() if cls in (DataConfig, EncoderConfig) else None)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ConfigError(
            f"unknown config key(s) {sorted(f'{where}{k}' for k in unknown)}; valid keys here: {sorted(names)}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}{k}") for k, v in data.items()}
    return cls(**kwargs)  # type: ignore[call-arg]


def apply_overrides(cfg: ProtosegConfig, overrides: list[str]) -> ProtosegConfig:
    """Apply ``section.key=value`` strings (YAML-parsed values) on top of a config."""
    return from_dict(ProtosegConfig, override_mapping(to_dict(cfg), overrides, ConfigError))


def config_from_dict(data: dict[str, Any]) -> ProtosegConfig:
    """A run config from a plain mapping (a YAML file, or a checkpoint's ``train_config``); old flat
    ``stage1`` keys are accepted."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a config must be a mapping of sections (data, model, stage1, ...), got {type(data).__name__}"
        )
    return from_dict(ProtosegConfig, data)


def merge_config(base: ProtosegConfig, data: dict[str, Any]) -> ProtosegConfig:
    """``base`` with the (possibly partial) mapping ``data`` laid over it, section by section; old flat
    ``stage1`` keys in ``data`` are moved to their sections first."""
    if not isinstance(data, dict):
        raise ConfigError(f"a config must be a mapping of sections (data, model, ...), got {type(data).__name__}")
    if isinstance(data.get("stage1"), dict):
        data = {**data, "stage1": upgrade_keys(data["stage1"], STAGE1_RENAMED, "stage1.", ConfigError)}

    def merge(into: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        out = dict(into)
        for key, value in extra.items():
            both = isinstance(value, dict) and isinstance(out.get(key), dict)
            out[key] = merge(out[key], value) if both else value
        return out

    return config_from_dict(merge(to_dict(base), data))


def load_config(
    path: str | Path | None = None, overrides: list[str] | None = None, base: ProtosegConfig | None = None
) -> ProtosegConfig:
    """Defaults (or ``base``, e.g. a preset), then the YAML file (if any), then overrides."""
    cfg = base if base is not None else ProtosegConfig()
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
        cfg = config_from_dict(data) if base is None else merge_config(base, data)
    return apply_overrides(cfg, overrides or [])


def save_config(cfg: ProtosegConfig, path: str | Path) -> None:
    """Write the full resolved config as YAML (reproducibility)."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
