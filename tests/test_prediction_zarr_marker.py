"""Issue 22 item 17: a prediction folder holds nothing zarr does not recognise, so opening or listing it gives
no "`.protoseg-output.json` is not a zarr component" warning; protoseg's marker lives in ``zarr.json``."""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

from protoseg.outputs import MARKER, ZARR_MARKER_ATTR, owned_by, read_marker
from test_infer_fakes import CLASSES, SmoothModel, smooth_image

ZARR_WARNING = "not recognized as a component of a Zarr hierarchy"


def _predict(out: Path) -> Path:
    from protoseg.infer.batch import predict_slide_to_omezarr
    from protoseg.infer.memory import ArraySlide
    from protoseg.infer.predictor import Predictor

    p = Predictor(SmoothModel(), classes=CLASSES, mpp=0.5, tile_size=16, overlap=4)
    predict_slide_to_omezarr(p, ArraySlide(smooth_image(40, 48, seed=2), mpp=0.5), out, chunk=32, tissue_only=False)
    return out


def _zarr_warnings(action: Callable[[], object]) -> list[str]:
    """Messages of the zarr 'not a component' warnings ``action`` raises (every warning is recorded)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        action()
    return [str(w.message) for w in caught if ZARR_WARNING in str(w.message)]


def _open_every_way(path: Path) -> None:
    """Open a prediction as protoseg, the napari reader and a zarr user listing its members do."""
    import zarr

    from protoseg.infer.omezarr import check_finished, open_prediction
    from protoseg.napari.reader import prediction_layer_data

    check_finished(open_prediction(path))
    prediction_layer_data(path)
    group = zarr.open_group(str(path), mode="r")
    assert sorted(name for name, _ in group.members()) == ["done", "mask", "probs"]


def test_opening_a_prediction_gives_no_zarr_component_warning(tmp_path: Path) -> None:
    from protoseg.export import export_prediction

    pred = _predict(tmp_path / "s.zarr")
    assert not (pred / MARKER).exists() and owned_by(pred, "prediction")
    assert json.loads((pred / "zarr.json").read_text())["attributes"][ZARR_MARKER_ATTR]["kind"] == "prediction"
    assert _zarr_warnings(lambda: _open_every_way(pred)) == []
    copy = export_prediction(pred, "ome-zarr", tmp_path / "copy.zarr")
    assert not (copy / MARKER).exists() and owned_by(copy, "prediction")
    assert _zarr_warnings(lambda: _open_every_way(copy)) == []
    _predict(pred)  # resuming rewrites the completion attributes: the marker stays
    assert read_marker(pred)["entries"] == ["done", "mask", "probs", "zarr.json"]


def test_an_older_marker_file_moves_into_zarr_json_when_the_prediction_is_resumed(tmp_path: Path) -> None:
    pred = _predict(tmp_path / "s.zarr")
    meta = json.loads((pred / "zarr.json").read_text())
    marker = meta["attributes"].pop(ZARR_MARKER_ATTR)
    (pred / "zarr.json").write_text(json.dumps(meta))
    (pred / MARKER).write_text(json.dumps(marker))  # as the previous release wrote it
    assert _zarr_warnings(lambda: _open_every_way(pred))  # what a user of an older prediction saw
    assert read_marker(pred) == marker  # still recognised as protoseg's
    _predict(pred)  # resume
    assert not (pred / MARKER).exists() and read_marker(pred)["entries"] == marker["entries"]
    assert _zarr_warnings(lambda: _open_every_way(pred)) == []
