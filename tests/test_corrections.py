"""Corrections store (create, reopen, mismatch, ownership, digest) and its QuPath GeoJSON round trip."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from protoseg import outputs
from protoseg.classes import BCSS_WSSS
from protoseg.corrections import (
    CORRECTIONS_SUFFIX,
    CorrectionsError,
    create_corrections,
    default_corrections_path,
    open_corrections,
    open_or_create_corrections,
)
from protoseg.corrections.geojson import corrections_from_geojson, corrections_to_geojson

GEOM = {"slide": "slide.svs", "shape": (700, 600), "mpp": 2.0, "scale": 4.0, "classes": BCSS_WSSS}


def _painted(tmp_path: Path, name: str = "a") -> object:
    store = create_corrections(tmp_path / f"{name}{CORRECTIONS_SUFFIX}", chunk=256, **GEOM)
    block = np.zeros((300, 300), np.uint8)
    block[20:100, 30:200] = 1  # TUM with a hole
    block[50:60, 60:70] = 0
    block[150:290, 10:100] = 3  # LYM
    block[200:210, 150:152] = 5  # background
    block[5, 5] = block[6, 6] = 2  # STR, two diagonal pixels: two objects
    store.write(200, 250, block)
    store.array[650:690, 10:40] = 4  # the GUI paints through the array
    return store


def test_default_path_is_stable_per_slide(tmp_path: Path) -> None:
    a = default_corrections_path(tmp_path, tmp_path / "s1.svs")
    assert a == default_corrections_path(tmp_path, tmp_path / "x" / ".." / "s1.svs")
    assert a.parent == tmp_path and a.name.startswith("s1.svs-") and a.name.endswith(CORRECTIONS_SUFFIX)
    assert a != default_corrections_path(tmp_path, tmp_path / "other" / "s1.svs")


def test_create_write_reopen_counts_and_marker(tmp_path: Path) -> None:
    store = _painted(tmp_path)
    assert outputs.read_marker(store.path)["kind"] == "corrections"
    assert not (store.path / outputs.MARKER).exists()  # the marker lives in zarr.json
    again = open_corrections(store.path, mode="r")
    assert again.shape == (700, 600) and again.mpp == 2.0 and again.scale == 4.0
    assert again.classes == BCSS_WSSS and again.slide == str(Path("slide.svs").resolve())
    counts = again.counts()
    assert counts["TUM"] == 80 * 170 - 100 and counts["STR"] == 2 and counts["NEC"] == 40 * 30
    assert counts["background"] == 20 and not again.is_empty()
    assert again.reviewed.shape == (3, 3)
    again_rw = open_corrections(store.path)
    again_rw.mark_reviewed(1, 2)
    assert open_corrections(store.path).reviewed_count() == 1
    with pytest.raises(CorrectionsError, match="values 0..5"):
        store.write(0, 0, np.full((2, 2), 6, np.uint8))


def test_digest_is_stable_and_follows_content(tmp_path: Path) -> None:
    a = _painted(tmp_path, "a")
    b = _painted(tmp_path, "b")
    assert a.digest() == b.digest() == open_corrections(a.path, "r").digest()
    empty = create_corrections(tmp_path / "e.corrections.zarr", **GEOM)
    assert empty.is_empty() and empty.counts()["TUM"] == 0
    first = empty.digest()
    empty.array[0:3, 0:3] = 2
    assert empty.digest() != first
    empty.array[0:3, 0:3] = 0  # erased: the chunk is gone and the digest is the empty one again
    assert empty.is_empty() and empty.digest() == first
    b.array[0, 0] = 1
    assert a.digest() != b.digest()


def test_open_or_create_reopens_only_a_matching_store(tmp_path: Path) -> None:
    path = tmp_path / "s.corrections.zarr"
    store = open_or_create_corrections(path, **GEOM)
    store.array[1, 1] = 1
    assert open_or_create_corrections(path, **GEOM).read(0, 3, 0, 3)[1, 1] == 1
    for change, word in (({"mpp": 1.0}, "mpp 2 vs 1"), ({"shape": (10, 10)}, "grid"), ({"slide": "b.svs"}, "slide")):
        with pytest.raises(CorrectionsError, match=word) as info:
            open_or_create_corrections(path, **{**GEOM, **change})
        assert "\n" not in str(info.value)
    with pytest.raises(CorrectionsError, match="classes"):
        open_or_create_corrections(path, **{**GEOM, "classes": BCSS_WSSS.__class__(names=("A", "B"))})
    with pytest.raises(CorrectionsError, match="already holds corrections"):
        create_corrections(path, **GEOM)
    assert open_corrections(path).read(0, 3, 0, 3)[1, 1] == 1  # nothing painted was lost


def test_foreign_folders_are_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(CorrectionsError, match="not written by protoseg") as info:
        create_corrections(foreign, **GEOM)
    assert "\n" not in str(info.value) and (foreign / "notes.txt").read_text() == "mine"
    with pytest.raises(CorrectionsError, match="is not a protoseg corrections store"):
        open_corrections(foreign)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert create_corrections(empty, **GEOM).is_empty()  # an empty folder is free
    with pytest.raises(CorrectionsError, match="positive"):
        create_corrections(tmp_path / "bad.corrections.zarr", **{**GEOM, "mpp": 0})


def test_geojson_round_trip_gives_the_same_pixels(tmp_path: Path) -> None:
    store = _painted(tmp_path)
    out = corrections_to_geojson(store, tmp_path / "c.geojson")
    doc = json.loads(out.read_text())
    assert doc["type"] == "FeatureCollection" and doc["protoseg"]["kind"] == "geojson-export"
    names = sorted(f["properties"]["classification"]["name"] for f in doc["features"])
    assert names == ["LYM", "NEC", "STR", "STR", "TUM", "background"]
    tum = next(f for f in doc["features"] if f["properties"]["classification"]["name"] == "TUM")
    assert tum["properties"]["objectType"] == "annotation" and tum["properties"]["classification"]["color"] == [
        255,
        0,
        0,
    ]
    assert len(tum["geometry"]["coordinates"]) == 2  # exterior + the hole
    xs = [p[0] for p in tum["geometry"]["coordinates"][0]]
    assert min(xs) == (250 + 30) * 4 and max(xs) == (250 + 200) * 4  # level-0 slide pixels
    assert tum["properties"]["measurements"]["Area µm^2"] == pytest.approx((80 * 170 - 100) * 4.0)
    fresh = create_corrections(tmp_path / "b.corrections.zarr", chunk=256, **GEOM)
    assert corrections_from_geojson(out, fresh) == sum(store.counts().values())
    np.testing.assert_array_equal(fresh.read(0, 700, 0, 600), store.read(0, 700, 0, 600))
    assert fresh.digest() == store.digest()
    assert corrections_to_geojson(store, out).read_text() == out.read_text()  # our own file: replaced
    detections = corrections_to_geojson(store.path, tmp_path / "d.geojson", object_type="detection")
    assert {f["properties"]["objectType"] for f in json.loads(detections.read_text())["features"]} == {"detection"}


def test_geojson_import_reads_qupath_objects_and_skips_unknown_classes(tmp_path: Path, caplog) -> None:
    store = create_corrections(tmp_path / "q.corrections.zarr", **GEOM)
    square = [[[40, 40], [80, 40], [80, 80], [40, 80], [40, 40]]]  # slide px: grid 10..20
    doc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
             "properties": {"objectType": "annotation", "classification": {"name": "STR", "color": [0, 255, 0]}}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
             "properties": {"classification": {"name": "Stroma"}}},
            {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": square},
             "properties": {"classification": {"name": "TUM: STR"}}},
        ],
    }  # fmt: skip
    path = tmp_path / "qupath.geojson"
    path.write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING):
        assert corrections_from_geojson(path, store) == 100
    assert "Stroma" in caplog.text and "TUM: STR" in caplog.text and "skipped 2" in caplog.text
    assert store.counts()["STR"] == 100 and (store.read(10, 20, 10, 20) == 2).all()
    (tmp_path / "bad.geojson").write_text("{")
    with pytest.raises(CorrectionsError, match="cannot read GeoJSON"):
        corrections_from_geojson(tmp_path / "bad.geojson", store)


def test_export_refuses_a_foreign_file(tmp_path: Path) -> None:
    store = _painted(tmp_path)
    mine = tmp_path / "mine.geojson"
    mine.write_text("{}")
    with pytest.raises(outputs.OutputOwnershipError, match="--overwrite"):
        corrections_to_geojson(store, mine)
    assert mine.read_text() == "{}"
    corrections_to_geojson(store, mine, overwrite=True)
    assert json.loads(mine.read_text())["features"]


def test_margin_uncertainty_and_next_review_block() -> None:
    from protoseg.infer.uncertainty import margin_uncertainty, next_review_block

    probs = np.zeros((3, 2, 2), np.uint8)
    probs[0, 0, 0] = 255  # certain
    probs[0, 0, 1], probs[1, 0, 1] = 128, 127  # nearly tied
    probs[:, 1, :] = 85  # all tied
    np.testing.assert_array_equal(margin_uncertainty(probs), [[0, 254], [255, 255]])
    blocks = np.array([[0.1, np.nan], [0.9, 0.5]])
    assert next_review_block(blocks, np.zeros((2, 2))) == (1, 0)
    assert next_review_block(blocks, np.array([[0, 0], [1, 0]])) == (1, 1)
    assert next_review_block(blocks, np.array([[1, 0], [1, 1]])) is None  # the NaN block is unknown
    assert next_review_block(np.full((2, 2), np.nan), np.zeros((2, 2))) is None


def test_unknown_resolution_is_kept_and_compared(tmp_path: Path) -> None:
    """A slide without mpp predicted by a model without mpp (a PNG at native pixels): the store records null,
    reopens with None, and a store with a resolution does not match an unknown one."""
    geom = {**GEOM, "mpp": None, "scale": 1.0}
    store = create_corrections(tmp_path / f"n{CORRECTIONS_SUFFIX}", **geom)
    store.write(0, 0, np.ones((4, 4), np.uint8))
    again = open_or_create_corrections(store.path, **geom)
    assert again.mpp is None and again.counts()["TUM"] == 16
    with pytest.raises(CorrectionsError, match="mpp unknown vs 2"):
        open_or_create_corrections(store.path, **{**geom, "mpp": 2.0})
    doc = json.loads(corrections_to_geojson(store, tmp_path / "n.geojson").read_text())
    assert "Area px^2" in doc["features"][0]["properties"]["measurements"]


def test_review_score_never_prefers_an_edge_sliver() -> None:
    """A 1-px column of the grid's edge that is fully uncertain scores below a whole block that is half
    uncertain: the score is the uncertainty over the block's full area (a mean over the sliver would pick it)."""
    from protoseg.infer.uncertainty import block_uncertainty, next_review_block, review_scores

    u = np.zeros((8, 9))
    u[:, 8] = 255  # the sliver: column 8 is block column 2 of 4-px blocks, one pixel wide
    u[0:4, 0:2] = 255  # half of block (0, 0)
    scores = block_uncertainty(u, 4)
    assert scores.shape == (2, 3)
    assert next_review_block(scores, np.zeros((2, 3))) == (0, 0)
    assert scores[0, 0] == 127.5 and scores[0, 2] == 255 / 4
    assert np.isnan(review_scores(np.zeros(2), np.array([0, 5]), 4)[0])  # nothing computed: unknown


def test_reviewed_blocks_keep_what_was_shown(tmp_path) -> None:
    """Marking a block reviewed keeps the class map shown there (accepted; 255 = not shown), unmarking clears
    it, a wrong-sized map is refused, and the review digest changes with what was accepted."""
    from protoseg.classes import BCSS_WSSS
    from protoseg.corrections import create_corrections
    from protoseg.corrections.errors import CorrectionsError

    store = create_corrections(
        tmp_path / "a.corrections.zarr", slide=tmp_path / "s.tif", shape=(40, 50), mpp=1.0, scale=1.0,
        classes=BCSS_WSSS, chunk=32,
    )  # fmt: skip
    empty = store.review_digest()
    assert store.block_box(1, 1) == (32, 40, 32, 50)
    shown = np.full((8, 18), 2, np.uint8)
    shown[0, 0] = 255
    store.mark_reviewed(1, 1, shown=shown)
    got = store.read_accepted(32, 40, 32, 50)
    assert got[0, 0] == -1 and (got.ravel()[1:] == 2).all() and store.reviewed[1, 1] == 1
    assert store.review_digest() != empty
    with pytest.raises(CorrectionsError, match="must be"):
        store.mark_reviewed(0, 0, shown=np.zeros((3, 3), np.uint8))
    store.mark_reviewed(1, 1, value=False)
    assert (store.read_accepted(32, 40, 32, 50) == -1).all() and store.review_digest() == empty
