"""Valid range of every numeric run-config setting (``RANGES``), checked whenever a config is built, and of
the numbers that enter elsewhere (``MPP`` for every resolution: checkpoints, slide metadata, options);
knows no config class: ``protoseg.config`` passes in its config tree and its ``ConfigError``. Imports
nothing of protoseg, so every layer may use it."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Range:
    """Valid values of a numeric setting: finite (no NaN/inf) and within optional bounds; None passes
    (optional settings). A tuple setting is checked element by element."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False  # True: low itself is not allowed (``> low``)

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is out of range, or None when it is fine."""
        if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if not math.isfinite(value):
            return "not a finite number"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return "out of range"
        if self.high is not None and value > self.high:
            return "out of range"
        return None

    def describe(self) -> str:
        low = None if self.low is None else f"{'>' if self.low_open else '>='} {self.low:g}"
        high = None if self.high is None else f"<= {self.high:g}"
        return " and ".join(p for p in (low, high) if p) or "finite"


POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
FRACTION = Range(0, 1)
AT_LEAST_ONE = Range(1)
#: Microns per pixel of anything (a slide's level 0, a model's input, a typed or ``--slide-mpp`` value): from
#: 0.01 µm (ten times finer than light microscopy resolves) to 100 µm (a 0.1x overview). Checked at every
#: entry: checkpoint load, slide open (an implausible file value counts as unknown), options, ``run.mpp``.
MPP = Range(0.01, 100)
#: Model mpp / slide mpp for prediction: a slide is upsampled at most 16x and downsampled at most 64x (a
#: larger factor means one of the two resolutions is wrong, and would read or allocate huge regions).
MPP_SCALE = Range(1 / 16, 64)

#: Valid range of every numeric setting, by dotted key; checked whenever a ProtosegConfig is built.
#: A new numeric setting adds its line here (tests/test_hostile_inputs.py checks none is missing).
RANGES: dict[str, Range] = {
    "data.patch_size": Range(16, 8192),
    "data.scale": Range(0.05, 4),
    "data.batch_size": AT_LEAST_ONE,
    "data.num_workers": NON_NEGATIVE,
    "data.max_train": AT_LEAST_ONE,
    "data.max_val": AT_LEAST_ONE,
    "bank.encoder.input_size": Range(16, 8192),
    "bank.k": AT_LEAST_ONE,
    "bank.n_per_cluster": AT_LEAST_ONE,
    "bank.white_threshold": FRACTION,
    "model.learnable_k": AT_LEAST_ONE,
    "model.output_stride": Range(16, 32),  # 16 or 32 (the backbone names the choice)
    "model.projector_hidden": AT_LEAST_ONE,
    "stage1.epochs": AT_LEAST_ONE,
    "stage1.warm_start_steps": AT_LEAST_ONE,
    "stage1.warm_start_batch": Range(2, 4096),
    "stage1.lr": POSITIVE,
    "stage1.weight_decay": NON_NEGATIVE,
    "stage1.grad_clip": NON_NEGATIVE,  # 0 = no clipping
    "stage1.stage_weights": NON_NEGATIVE,
    "stage1.fusion_weights": NON_NEGATIVE,
    "stage1.score_gate": FRACTION,
    "stage1.cls_weight": NON_NEGATIVE,
    "stage1.cam_area_weight": NON_NEGATIVE,
    "stage1.delta": FRACTION,
    "stage1.max_pairs": NON_NEGATIVE,  # 0 = all
    "stage1.similarity.weight": NON_NEGATIVE,
    "stage1.similarity.fg_weight": NON_NEGATIVE,
    "stage1.similarity.bg_weight": NON_NEGATIVE,
    "stage1.similarity.temperature": POSITIVE,
    "stage1.lpd.diversity_weight": NON_NEGATIVE,
    "stage1.lpd.diversity_warmup_epochs": NON_NEGATIVE,
    "stage1.lpd.diversity_temperature": POSITIVE,
    "stage1.pscl.weight": NON_NEGATIVE,
    "stage1.pscl.tau": FRACTION,
    "stage1.pscl.temperature": POSITIVE,
    "stage1.pscl.max_pixels": Range(2),
    "stage1.pscl.decoder_dim": AT_LEAST_ONE,
    "stage1.plim.weights": NON_NEGATIVE,
    "stage1.pseudo.ignore_below": FRACTION,
    "stage1.pseudo.tie_margin": FRACTION,
    "stage1.pseudo.bg_open_radius": Range(0, 0.5),
    "stage1.pseudo.bg_min_size": NON_NEGATIVE,
    "stage1.pseudo.scales": Range(0.25, 4),
    "stage2.decoder_dim": AT_LEAST_ONE,
    "stage2.epochs": AT_LEAST_ONE,
    "stage2.lr": POSITIVE,
    "stage2.weight_decay": NON_NEGATIVE,
    "stage2.grad_clip": NON_NEGATIVE,
    "run.seed": Range(0, 2**63 - 1),
    "run.mpp": MPP,
    "run.log_every": AT_LEAST_ONE,
}


#: Ranges of numeric options that are not run-config settings (``protoseg export`` flags and their
#: ``export_prediction`` arguments); checked with ``check_value`` and, on the command line, ``cli.args.float_in``.
SIMPLIFY_UM = Range(0, 1000)  # GeoJSON outline smoothing tolerance in µm (0 = exact pixel outlines; 1 mm at most)
MIN_AREA_UM2 = Range(0, 1e8)  # GeoJSON objects/holes smaller than this many µm² are dropped (100 mm² at most)


def _refusal(name: str, value: Any, why: str, rule: Range) -> str:
    return f"{name}={value!r} is {why}: expected a number {rule.describe()}"


def check_value(name: str, value: Any, rule: Range, error: type[Exception], hint: str = "") -> None:
    """Raise ``error`` naming ``name`` when ``value`` is outside ``rule`` (NaN and inf included); ``hint``
    (what to do) ends the message."""
    why = rule.problem(value)
    if why is not None:
        raise error(_refusal(name, value, why, rule) + (f"; {hint}" if hint else ""))


def numeric_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Every int/float (or tuple-of-numbers) setting of a config tree by dotted key, with its value."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out.update(numeric_keys(value, f"{key}."))
            continue
        items = value if isinstance(value, tuple) else (value,)
        if items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            out[key] = value
    return out


def check_ranges(cfg: Any, error: type[Exception], prefix: str = "") -> None:
    """Raise ``error`` (the config's ConfigError) naming the first setting outside its ``RANGES`` entry
    (NaN and inf included)."""
    for key, value in numeric_keys(cfg, prefix).items():
        rule = RANGES.get(key, Range())  # unlisted numbers must at least be finite
        for v in value if isinstance(value, tuple) else (value,):
            why = rule.problem(v)
            if why is not None:
                raise error(_refusal(key, value, why, rule))
