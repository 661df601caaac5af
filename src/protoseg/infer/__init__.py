"""Slide-scale inference: tiled prediction with seamless blending, lazy prediction pyramids,
batch OME-Zarr output (bounded, resumable pipeline) and many slides on dask.distributed.

Heavy pieces are imported on first use so ``import protoseg.infer`` stays light.
"""

from __future__ import annotations

from protoseg.lazy import lazy_exports

_EXPORTS = {
    "Predictor": "protoseg.infer.predictor",
    "RegionPrediction": "protoseg.infer.predictor",
    "BlendWindow": "protoseg.infer.blending",
    "PadMode": "protoseg.infer.reader",
    "select_device": "protoseg.infer.device",
    "LazyPrediction": "protoseg.infer.lazy",
    "ByteLRU": "protoseg.infer.cache",
    "predict_slide_to_omezarr": "protoseg.infer.batch",
    "BatchResult": "protoseg.infer.batch",
    "open_prediction": "protoseg.infer.omezarr",
    "PredictionZarr": "protoseg.infer.omezarr",
    "predict_many": "protoseg.infer.distributed",
    "SlideOutcome": "protoseg.infer.distributed",
    "ArraySlide": "protoseg.infer.memory",
    "InferenceError": "protoseg.infer.errors",
    "MissingMppError": "protoseg.slide.errors",
    "OutputError": "protoseg.infer.errors",
}

__all__ = sorted(_EXPORTS)


__getattr__ = lazy_exports(__name__, _EXPORTS)
