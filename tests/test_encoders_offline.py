"""Foundation-model encoders by name, offline: ``hf-hub:`` ids load from a (fake) local Hugging Face cache,
local model folders load as they are, a missing id fails with one line naming what to copy where, and the CLI
builds a bank with a named local encoder. Tiny models only; nothing is downloaded."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from protoseg.cli import main
from protoseg.models.encoders import EncoderError, EncoderSpec, EncoderWeightsError, build_encoder, encoder_choice
from tiny_models import (
    CLIP_MEAN,
    CLIP_REPO,
    CLIP_STD,
    MISSING_REPO,
    TIMM_REPO,
    seeded,
    use_offline_cache,
    write_tiny_models,
)

timm = pytest.importorskip("timm")
open_clip = pytest.importorskip("open_clip")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A tiny timm and a tiny open_clip model, each in the fake HF cache and in a plain folder."""
    return write_tiny_models(tmp_path_factory.mktemp("models"))


@pytest.fixture
def offline_cache(models: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    use_offline_cache(monkeypatch, models["cache"])
    return models["cache"]


def _timm_reference(model, x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(model((x - mean) / std), dim=-1)


def test_timm_hub_id_loads_from_the_cache_offline_and_from_a_folder(models: dict, offline_cache: Path) -> None:
    x = torch.rand(2, 3, 160, 160, generator=torch.Generator().manual_seed(0))
    ref = _timm_reference(models["timm"], x)
    hub = build_encoder(EncoderSpec(kind="timm", pretrained=f"hf-hub:{TIMM_REPO}"))
    assert hub.encoder_id == f"timm:hf-hub:{TIMM_REPO}@hf-hub:{TIMM_REPO}"
    by_name = build_encoder(EncoderSpec(kind="timm", model_name=f"hf-hub:{TIMM_REPO}"))  # the name is the weights
    folder = build_encoder(EncoderSpec(kind="timm", pretrained=str(models["root"] / "tiny-timm")))
    assert folder.encoder_id == "timm:tiny-timm@dir:tiny-timm"
    with torch.no_grad():
        for enc in (hub, by_name, folder):
            torch.testing.assert_close(enc.encode(x), ref, atol=1e-5, rtol=1e-4)
    random = seeded(lambda: timm.create_model("test_resnet", num_classes=0).eval(), 0)
    assert (_timm_reference(random, x) - ref).abs().max() > 1e-2  # the weights were loaded, not an init


def test_open_clip_hub_id_loads_from_the_cache_offline(models: dict, offline_cache: Path) -> None:
    enc = build_encoder(EncoderSpec(kind="open_clip", pretrained=f"hf-hub:{CLIP_REPO}"))
    assert enc.encoder_id == f"open_clip:hf-hub:{CLIP_REPO}@hf-hub:{CLIP_REPO}"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    m, s = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = F.normalize(models["clip"].encode_image((x - m) / s), dim=-1)
        torch.testing.assert_close(enc.encode(x), ref, atol=1e-5, rtol=1e-4)
        assert enc.encode_text(["tumour"]).shape == (1, 32)  # the tokenizer needs no network either


@pytest.mark.parametrize("kind", ["timm", "open_clip"])
def test_missing_hub_id_offline_names_what_to_copy_where(kind: str, offline_cache: Path) -> None:
    with pytest.raises(EncoderWeightsError) as err:
        build_encoder(EncoderSpec(kind=kind, pretrained=f"hf-hub:{MISSING_REPO}"))
    text = str(err.value)
    assert "\n" not in text
    for part in (
        f"hf-hub:{MISSING_REPO} is not in the local Hugging Face cache {offline_cache}",
        "models--protoseg-test--absent",
        "HF_HUB_OFFLINE=1",
        f"`hf download {MISSING_REPO}`",
        f"`huggingface-cli download {MISSING_REPO}`",
        "--local-dir absent",
        "bank.encoder.pretrained",
        "--encoder-weights",
    ):
        assert part in text, (part, text)


def test_encoder_choice_is_checked_without_loading(tmp_path: Path) -> None:
    assert encoder_choice("timm", " ", f" hf-hub:{TIMM_REPO} ").pretrained == f"hf-hub:{TIMM_REPO}"
    assert encoder_choice("open_clip", "ViT-B-32", "").pretrained is None
    assert encoder_choice("timm", "", str(tmp_path)).model_name == ""  # a folder names its model
    with pytest.raises(EncoderError, match="takes no model name or weights"):
        encoder_choice("descriptor", "resnet50")
    with pytest.raises(EncoderError, match="needs a model_name"):
        encoder_choice("timm", "", "")
    with pytest.raises(EncoderWeightsError, match="does not exist"):
        encoder_choice("open_clip", "ViT-B-32", str(tmp_path / "missing.pt"))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from protoseg.data.synthetic.writers import write_bcss_dataset

    return write_bcss_dataset(tmp_path_factory.mktemp("ds"), n_train=12, n_val=0, n_test=0, size=64, seed=0)


def test_cli_builds_a_bank_with_a_named_local_encoder(
    models: dict, offline_cache: Path, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from protoseg.bank import load_bank
    from protoseg.bank.encoder_lookup import encoder_for_bank

    common = ["--data", str(dataset), "--k", "1", "--n", "2", "--set", "run.device=cpu"]
    hub_id = f"hf-hub:{TIMM_REPO}"
    assert (
        main(["bank", "build", *common, "--out", str(tmp_path / "a"), "--encoder", "timm", "--encoder-weights", hub_id])
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["encoder"] == f"timm:{hub_id}@{hub_id}" and summary["dim"] == models["timm"].num_features
    assert encoder_for_bank(load_bank(tmp_path / "a")).encoder_id == summary["encoder"]  # rebuilt offline too
    folder = str(models["root"] / "tiny-clip")
    args = ["--encoder", "open_clip", "--encoder-name", "tiny", "--encoder-weights", folder]
    assert main(["bank", "build", *common, "--out", str(tmp_path / "b"), *args]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["encoder"] == "open_clip:tiny@dir:tiny-clip"
    assert main(["bank", "build", *common, "--out", str(tmp_path / "c"), "--encoder-weights", folder]) == 2
    assert "need --encoder open_clip or --encoder timm" in capsys.readouterr().err


def test_cli_offline_error_is_one_line(offline_cache: Path, dataset: Path, tmp_path: Path) -> None:
    """What a user sees: exit code 2 and one line on stderr, no traceback."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(offline_cache), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "protoseg", "bank", "build", "--data", str(dataset), "--out", str(tmp_path / "x")]
    cmd += ["--encoder", "timm", "--encoder-weights", f"hf-hub:{MISSING_REPO}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert "Traceback" not in done.stderr
    errors = [line for line in lines if line.startswith("protoseg: error:")]
    assert len(errors) == 1, done.stderr
    assert str(offline_cache) in errors[0] and f"hf download {MISSING_REPO}" in errors[0]
    assert not (tmp_path / "x").exists()
