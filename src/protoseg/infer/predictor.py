"""Tiled model inference: batches of uint8 tiles -> class scores, blended over overlapping tiles.

A ``Predictor`` wraps any ``nn.Module`` with ``predict(x) -> (B, C+1, H, W)`` scores (channel C is
background) or a protoseg ``Checkpoint``. Regions are predicted on the slide-wide tile grid of
``protoseg.infer.grid`` so any box gives exactly the values a whole-slide run gives there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from protoseg import cams as cam_ops
from protoseg.classes import ClassSpec
from protoseg.infer.blending import BlendWindow, blend_tiles, blend_tiles_torch, make_window
from protoseg.infer.device import amp_dtype as amp_dtype_for
from protoseg.infer.device import autocast_for, default_batch_size, select_device, to_host
from protoseg.infer.errors import InferenceError
from protoseg.infer.grid import Box, PredictionGrid, TileIndex
from protoseg.infer.identity import model_sha256
from protoseg.infer.reader import PadMode, RegionReader, SlideLike, open_any, resolve_resolution

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RegionPrediction:
    """Blended scores (C+1, H, W) float32 and argmax mask (H, W) uint8 at ``mpp`` for a slide box.

    ``box`` is (x, y, w, h) on the prediction grid; ``scale`` level-0 px per prediction px.
    """

    probs: np.ndarray
    mask: np.ndarray
    box: Box
    mpp: float | None
    scale: float


@dataclass(frozen=True)
class SlideGeometry:
    """Everything needed to predict one slide: pixel reader, global tile grid and resolution."""

    reader: RegionReader
    grid: PredictionGrid
    scale: float
    slide_mpp: float | None
    mpp: float | None


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune")


def compile_mode(value: bool | str) -> str:
    """``torch.compile`` mode for a ``compile`` option: True -> "default"; "reduce-overhead" replays CUDA graphs
    (fixed batch shapes: the last short batch records its own graph)."""
    mode = "default" if value is True else str(value)
    if mode not in COMPILE_MODES:
        raise InferenceError(f"compile must be true/false or one of {', '.join(COMPILE_MODES)}, got {value!r}")
    return mode


def channels_last_default(device_type: str) -> bool:
    """Channels-last (NHWC) convolutions by default on CUDA and on the CPU.

    On the CPU, NCHW inputs made the whole-slide pipeline fall from 0.93-0.98 to 0.66-0.81 of the model
    alone (``benchmarks/infer_pipeline.py``; 1.4-1.6x fewer tiles/s) when ``_input`` began making the
    permuted NHWC tiles contiguous NCHW; before, the permuted input had run channels-last by accident.
    """
    return device_type in ("cuda", "cpu")


class Predictor:
    """Runs a segmentation model over tiles with batching, optional AMP (CUDA) and flip TTA."""

    def __init__(
        self,
        model: nn.Module | Any | str | os.PathLike[str],
        *,
        classes: ClassSpec | None = None,
        mpp: float | None = None,
        device: str | torch.device = "auto",
        amp: bool = True,
        batch_size: int | None = None,
        tta: bool = False,
        tile_size: int | None = None,
        overlap: int | None = None,
        window: BlendWindow | str = BlendWindow.COSINE,
        window_floor: float = 0.1,
        pad: PadMode | str = PadMode.WHITE,
        amp_dtype: str = "auto",
        channels_last: bool | None = None,
        compile: bool | str = False,
        device_blend: bool | None = None,
    ) -> None:
        """``batch_size`` None = chosen for the device (``default_batch_size``); ``amp`` autocasts on CUDA
        to ``amp_dtype`` (auto: bf16 where supported, else fp16); ``channels_last`` (default: on CUDA and CPU;
        ``channels_last_default``) and
        ``compile`` (``torch.compile``: True or a mode, ``"reduce-overhead"`` = CUDA graphs) speed up
        convolutions; ``device_blend`` (default: on CUDA) keeps tile scores on the device and blends/quantises
        there, so only uint8 chunks come back to the host.
        """
        from protoseg.models.checkpoint import Checkpoint, load_checkpoint

        self.checkpoint_path: str | None = None
        owns_model = not isinstance(model, nn.Module)  # built here from a checkpoint: nobody else can change it
        if isinstance(model, (str, os.PathLike)):
            self.checkpoint_path = str(Path(model).resolve())
            model = load_checkpoint(model)
        if isinstance(model, Checkpoint):
            ckpt = model
            model = ckpt.build_model()
            classes = classes or ckpt.classes
            mpp = mpp if mpp is not None else ckpt.mpp
            tile_size = tile_size or ckpt.patch_size
            if mpp is None and ckpt.data_scale != 1:
                logger.warning(
                    "this checkpoint was trained on patches resampled by %g (data.scale) and records no µm/px, so "
                    "slides are read at full resolution, not at the one it learnt; retrain with --set run.mpp=<µm "
                    "per pixel of the patch files / %g>",
                    ckpt.data_scale,
                    ckpt.data_scale,
                )
        if not isinstance(model, nn.Module):
            raise InferenceError(f"Predictor needs an nn.Module, a Checkpoint or a checkpoint path, got {type(model)}")
        if classes is None:
            raise InferenceError(
                "Predictor(model) with a bare module needs classes=ClassSpec(...) (or use a Checkpoint)"
            )
        if batch_size is not None and batch_size < 1:
            raise InferenceError(f"batch_size must be >= 1, got {batch_size}")
        self.classes = classes
        self.mpp = None if mpp is None else float(mpp)
        self.device = select_device(device)
        self.amp = bool(amp)
        self.amp_dtype = amp_dtype_for(self.device, amp_dtype)
        self.tile_size = int(tile_size or 224)
        self.batch_size = int(batch_size) if batch_size is not None else default_batch_size(self.device, self.tile_size)
        on_cuda = self.device.type == "cuda"
        self.channels_last = channels_last_default(self.device.type) if channels_last is None else bool(channels_last)
        self.device_blend = on_cuda if device_blend is None else bool(device_blend)
        self.tta = bool(tta)
        self.overlap = int(self.tile_size // 4 if overlap is None else overlap)
        self.window_kind = BlendWindow(window)
        self.window = make_window(self.tile_size, self.window_kind, window_floor)
        self.pad = PadMode(pad)
        self.model = model.to(self.device).eval()
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the weights' identity, hashed once when the model is loaded here (not again for every slide)
        self._weights_sha256 = model_sha256(self.model) if owns_model else None
        fn = getattr(self.model, "predict", None)
        self._call = fn if callable(fn) else self._softmax
        if compile:
            self._call = torch.compile(self._call, mode=compile_mode(compile))
        self._window_t: dict[torch.device, torch.Tensor] = {}
        self.tiles_predicted = 0
        self._lock = threading.Lock()
        PredictionGrid(1, 1, self.tile_size, self.overlap)  # validates tile/overlap early

    @property
    def channels(self) -> int:
        """Output channels: tissue classes + background."""
        return self.classes.num_classes + 1

    def config(self) -> dict[str, Any]:
        """Plain description of what determines the output (stored with batch results)."""
        return {
            "classes": self.classes.to_dict(),
            "mpp": self.mpp,
            "tile_size": self.tile_size,
            "overlap": self.overlap,
            "window": self.window_kind.value,
            "pad": self.pad.value,
            "tta": self.tta,
            "checkpoint": self.checkpoint_path,
        }

    def weights_sha256(self) -> str:
        """SHA-256 of the model's weights (``model_sha256``): from loading for a checkpoint this predictor
        built, recomputed for a module the caller passed (which the caller may still change)."""
        return self._weights_sha256 or model_sha256(self.model)

    # ------------------------------------------------------------------ model calls
    def _softmax(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self._call(x)
        if out.ndim != 4 or out.shape[0] != x.shape[0] or out.shape[1] != self.channels:
            raise InferenceError(
                f"model output has shape {tuple(out.shape)}, expected (B, {self.channels}, H, W) for "
                f"{self.classes.num_classes} classes + background; check the checkpoint's classes."
            )
        if out.shape[2:] != x.shape[2:]:
            out = torch.nn.functional.interpolate(out.float(), size=x.shape[2:], mode="bilinear", align_corners=False)
        return out.float()

    def _predict_tensor(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast_for(self.device, self.amp, self.amp_dtype):
            if not self.tta:
                return self._forward(x)
            return cam_ops.flip_tta(self._forward, x, cam_ops.TTA_FLIPS)

    def _input(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 (B, h, w, 3) -> float32 (B, 3, h, w) in [0, 1] on the device (pinned, asynchronous upload)."""
        batch = torch.from_numpy(np.ascontiguousarray(tiles))
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        x = batch.permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x.contiguous()

    @staticmethod
    def _check_tiles(tiles: np.ndarray) -> np.ndarray:
        tiles = np.asarray(tiles)
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise InferenceError(f"predict_tiles expects uint8 (B, h, w, 3), got {tiles.dtype} {tiles.shape}")
        return tiles

    def predict_tiles_device(self, tiles: np.ndarray) -> torch.Tensor:
        """uint8 (B, h, w, 3) RGB tiles -> float32 (B, C+1, h, w) scores left on the device."""
        tiles = self._check_tiles(tiles)
        outs = []
        for start in range(0, len(tiles), self.batch_size):
            x = self._input(tiles[start : start + self.batch_size])
            with self._lock:
                outs.append(self._predict_tensor(x))
                self.tiles_predicted += len(x)
        if not outs:
            return torch.zeros((0, self.channels, *tiles.shape[1:3]), dtype=torch.float32, device=self.device)
        return outs[0] if len(outs) == 1 else torch.cat(outs)

    def predict_tiles(self, tiles: np.ndarray) -> np.ndarray:
        """uint8 (B, h, w, 3) RGB tiles -> float32 (B, C+1, h, w) scores, in batches of ``batch_size``."""
        out = to_host(self.predict_tiles_device(tiles).contiguous())
        return out.astype(np.float32, copy=False)

    def predict_for_blend(self, tiles: np.ndarray) -> list[Any]:
        """Per-tile scores for ``blend_box``: device tensors when ``device_blend``, else float32 numpy."""
        if self.device_blend:
            return list(self.predict_tiles_device(tiles).contiguous())
        return list(self.predict_tiles(tiles))

    # ------------------------------------------------------------------ slides
    def geometry(self, slide: SlideLike, slide_mpp: float | None = None) -> SlideGeometry:
        """Prediction grid for a slide at the model's mpp (clear error when the slide mpp is unknown)."""
        res = resolve_resolution(slide, self.mpp, slide_mpp)
        reader = RegionReader(slide, res.scale, self.pad)
        grid = PredictionGrid(reader.width, reader.height, self.tile_size, self.overlap)
        return SlideGeometry(reader, grid, res.scale, res.slide_mpp, res.output_mpp)

    def compute_tiles(self, geom: SlideGeometry, indices: Sequence[TileIndex]) -> list[np.ndarray]:
        """Read and predict the given global tiles; float32 (C+1, T, T) each."""
        t = self.tile_size
        out: list[np.ndarray] = []
        for start in range(0, len(indices), self.batch_size):
            part = indices[start : start + self.batch_size]
            pixels = np.stack([geom.reader.read((*geom.grid.origin(i), t, t)) for i in part])
            out.extend(self.predict_tiles(pixels))
        return out

    def blend_box(self, geom: SlideGeometry, box: Box, tiles: dict[TileIndex, Any]) -> Any:
        """Blend the (already predicted) global tiles covering ``box`` into float32 (C+1, h, w).

        numpy tiles blend on the host; torch tiles (``predict_for_blend`` with ``device_blend``) blend on
        their device with the same float64 arithmetic and give a device tensor with the same values.
        """
        order = geom.grid.tiles_for_box(box)
        items = [(*geom.grid.origin(i), tiles[i]) for i in order]
        if items and isinstance(items[0][2], torch.Tensor):
            dev = items[0][2].device
            if dev not in self._window_t:
                self._window_t[dev] = torch.from_numpy(self.window).to(dev)
            scores = blend_tiles_torch(box, items, self._window_t[dev], self.channels)
        else:
            scores = blend_tiles(box, items, self.window, self.channels)
        self._require_finite(scores, box)
        return scores

    def _require_finite(self, scores: Any, box: Box) -> None:
        """InferenceError naming the checkpoint when blended scores hold NaN or infinity (damaged weights, an
        overflow), which argmax would silently turn into the first class; NaN and inf survive blending."""
        finite = torch.isfinite(scores).all() if isinstance(scores, torch.Tensor) else np.isfinite(scores).all()
        if bool(finite):
            return
        source = f"checkpoint {self.checkpoint_path}" if self.checkpoint_path else "the model"
        amp = (
            "; if it only happens with mixed precision, pass --no-amp"
            if self.amp and self.device.type == "cuda"
            else ""
        )
        raise InferenceError(
            f"{source} gave NaN or infinite scores (prediction box {box}), so no class can be assigned: its "
            f"weights are damaged or its training diverged; use another checkpoint (e.g. best.pt) or train again{amp}"
        )

    def predict_box(self, geom: SlideGeometry, box: Box) -> np.ndarray:
        """Scores (C+1, h, w) for a box (x, y, w, h) of the prediction grid."""
        indices = geom.grid.tiles_for_box(box)
        return self.blend_box(geom, box, dict(zip(indices, self.compute_tiles(geom, indices))))

    def predict_region(
        self, slide: SlideLike | str | os.PathLike[str], box: Box, slide_mpp: float | None = None
    ) -> RegionPrediction:
        """Predict a level-0 box (x, y, w, h) of a slide; result at the model mpp, clipped to the slide."""
        slide = open_any(slide)
        geom = self.geometry(slide, slide_mpp)
        x, y, w, h = box
        if w <= 0 or h <= 0:
            raise InferenceError(f"region size must be positive, got {w}x{h}")
        s = geom.scale
        px0, py0 = max(0, int(np.floor(x / s))), max(0, int(np.floor(y / s)))
        px1, py1 = min(geom.grid.width, int(np.ceil((x + w) / s))), min(geom.grid.height, int(np.ceil((y + h) / s)))
        if px1 <= px0 or py1 <= py0:
            raise InferenceError(f"region {box} lies outside the slide ({slide.level_dimensions[0]} level-0 px)")
        pbox = (px0, py0, px1 - px0, py1 - py0)
        probs = self.predict_box(geom, pbox)
        return RegionPrediction(probs, argmax_mask(probs), pbox, geom.mpp, s)


def argmax_mask(probs: np.ndarray) -> np.ndarray:
    """(C+1, H, W) scores -> uint8 (H, W) class map (ties go to the lower index)."""
    return np.argmax(probs, axis=0).astype(np.uint8)
