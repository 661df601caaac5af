"""``protoseg predict`` / ``protoseg export`` and many slides on a 2-worker dask LocalCluster."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from protoseg.cli import main
from protoseg.infer.batch import predict_slide_to_omezarr
from protoseg.infer.distributed import output_names, predict_many
from protoseg.infer.omezarr import open_prediction
from protoseg.infer.predictor import Predictor
from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
from test_infer_fakes import CLASSES, smooth_image

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from protoseg.models import build_model
    from protoseg.slide.writer import write_pyramidal_tiff

    root = tmp_path_factory.mktemp("cli")
    cfg = {"kind": "segnet", "backbone": "resnet18", "num_classes": 3, "decoder_dim": 8, "weights": None}
    torch.manual_seed(0)
    model = build_model(cfg)
    save_checkpoint(Checkpoint(Stage.STAGE2, cfg, model.state_dict(), CLASSES, mpp=1.0, patch_size=32), root / "m.pt")
    slides = []
    for i, (h, w) in enumerate([(96, 128), (80, 64)]):
        img = smooth_image(h, w, seed=i) // 2 + np.array([100, 30, 90], np.uint8)  # all tissue-coloured
        write_pyramidal_tiff(root / f"s{i}.tif", img, mpp=0.5, tile_size=64, compression=None)
        slides.append(root / f"s{i}.tif")
    write_pyramidal_tiff(root / "nompp.tif", smooth_image(64, 64), mpp=None, tile_size=64, compression=None)
    (root / "broken.svs").write_bytes(b"not a slide at all" * 10)
    return root, slides


def test_output_names_are_unique():
    outs = output_names(["a/x.svs", "b/x.svs", "c/y.ome.tif"], "out")
    assert [o.name for o in outs] == ["x.zarr", "x-2.zarr", "y.zarr"]


def test_cli_predict_and_export(files, tmp_path, capsys):
    root, slides = files
    out = tmp_path / "preds"
    rc = main(
        [
            "predict",
            str(slides[0]),
            "--checkpoint",
            str(root / "m.pt"),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--batch-size",
            "4",
            "--chunk",
            "32",
        ]
    )
    assert rc == 0
    pz = open_prediction(out / "s0.zarr")
    assert pz.complete and pz.mask(0).shape == (48, 64)
    ref_dir = tmp_path / "ref.zarr"
    predict_slide_to_omezarr(Predictor(root / "m.pt", device="cpu"), str(slides[0]), ref_dir, chunk=32)
    assert np.array_equal(pz.probs(0)[...], open_prediction(ref_dir).probs(0)[...])
    for fmt, suffix in (("ome-tiff", ".mask.ome.tif"), ("geojson", ".geojson"), ("areas", ".areas.csv")):
        assert main(["export", str(out / "s0.zarr"), "--format", fmt]) == 0
        assert (out / f"s0{suffix}").stat().st_size > 0
    assert "areas.csv" in capsys.readouterr().out


def test_cli_errors_are_one_line(files, tmp_path, capsys):
    root, slides = files
    rc = main(["predict", str(slides[0]), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "does not exist" in capsys.readouterr().err
    rc = main(["predict", str(root / "nompp.tif"), "--checkpoint", str(root / "m.pt"), "--out", str(tmp_path / "o")])
    assert rc == 2 and "--slide-mpp" in capsys.readouterr().err
    rc = main(
        [
            "predict",
            str(root / "nompp.tif"),
            "--checkpoint",
            str(root / "m.pt"),
            "--out",
            str(tmp_path / "o"),
            "--slide-mpp",
            "0.5",
            "--no-tissue-only",
        ]
    )
    assert rc == 0
    rc = main(["export", str(tmp_path), "--format", "areas"])
    assert rc == 2 and "not a protoseg prediction" in capsys.readouterr().err


def test_predict_many_on_local_cluster(files, tmp_path):
    root, slides = files
    seen = []
    # processes=True works too (the CLI default) but its worker start-up took ~30 s on the 2-core test machine
    outcomes = predict_many(
        [*slides, root / "broken.svs"],
        root / "m.pt",
        tmp_path / "many",
        n_workers=2,
        processes=False,
        predictor_options={"device": "cpu", "batch_size": 8},
        on_result=seen.append,
        chunk=32,
    )
    assert [o.ok for o in outcomes] == [True, True, False] and len(seen) == 3
    assert "broken.svs" in outcomes[2].slide and outcomes[2].error
    for slide, o in zip(slides, outcomes):
        ref = tmp_path / f"ref-{slide.stem}.zarr"
        predict_slide_to_omezarr(Predictor(root / "m.pt", device="cpu"), str(slide), ref, chunk=32)
        assert np.array_equal(open_prediction(o.output).mask(0)[...], open_prediction(ref).mask(0)[...])


def test_many_slides_without_distributed_is_a_one_line_error(files, tmp_path, monkeypatch, capsys):
    root, slides = files
    monkeypatch.setitem(__import__("sys").modules, "distributed", None)  # the base install: no cluster extra
    rc = main(["predict", *map(str, slides), "--checkpoint", str(root / "m.pt"), "--out", str(tmp_path / "o")])
    assert rc == 0  # one process, no cluster: distributed is not needed
    capsys.readouterr()
    args = ["predict", *map(str, slides), "--checkpoint", str(root / "m.pt"), "--out", str(tmp_path / "o2")]
    rc = main([*args, "--workers", "2"])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "protoseg[cluster]" in err and len(err.splitlines()) == 1 and "Traceback" not in err
