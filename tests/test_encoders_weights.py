"""open_clip / timm encoders load weights from local files offline; missing weights give clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from protoseg.models.encoders import (
    EncoderError,
    EncoderSpec,
    EncoderWeightsError,
    OpenClipEncoder,
    TimmImageEncoder,
    build_encoder,
)

torch.set_num_threads(2)
CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(1, 3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(1, 3, 1, 1)


TINY_CLIP = {  # a tiny open_clip architecture (same code paths as ViT-B-32, a fraction of the time)
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
TINY_NAME = "protoseg-test-tiny-clip"


def _tiny_clip(seed: int):
    open_clip = pytest.importorskip("open_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(TINY_NAME, pretrained=None, pretrained_text=False).eval()


@pytest.fixture(scope="module")
def clip_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    """The tiny architecture registered with open_clip, randomly initialised (seed 123), saved as a state dict."""
    open_clip = pytest.importorskip("open_clip")
    cfg_dir = tmp_path_factory.mktemp("clipcfg")
    (cfg_dir / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg_dir / f"{TINY_NAME}.json")
    model = _tiny_clip(123)
    path = tmp_path_factory.mktemp("clip") / "tiny_clip_test.pt"
    torch.save(model.state_dict(), path)
    return model, path


@pytest.fixture(scope="module")
def clip_encoder(clip_checkpoint) -> OpenClipEncoder:
    return OpenClipEncoder(TINY_NAME, str(clip_checkpoint[1]))


def test_open_clip_image_tower_loads_local_checkpoint(clip_checkpoint, clip_encoder: OpenClipEncoder) -> None:
    model, path = clip_checkpoint
    assert clip_encoder.encoder_id == f"open_clip:{TINY_NAME}@file:{path.name}:{path.stat().st_size}"
    assert (clip_encoder.dim, clip_encoder.input_size) == (32, 64)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = clip_encoder.encode(x)
        ref = F.normalize(model.encode_image((x - CLIP_MEAN) / CLIP_STD), dim=-1)
        other = F.normalize(_tiny_clip(0).encode_image((x - CLIP_MEAN) / CLIP_STD), dim=-1)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert (got - other).abs().max() > 1e-2  # a differently initialised model differs: weights were loaded
    torch.testing.assert_close(got.norm(dim=1), torch.ones(2))


def test_open_clip_text_tower_and_gradients(clip_checkpoint, clip_encoder: OpenClipEncoder) -> None:
    import open_clip

    model, _ = clip_checkpoint
    texts = ["a histopathology image of tumour", "a histopathology image of stroma"]
    with torch.no_grad():
        got = clip_encoder.encode_text(texts)
        ref = F.normalize(model.encode_text(open_clip.get_tokenizer(TINY_NAME)(texts)), dim=-1)
    assert got.shape == (2, 32)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert all(not p.requires_grad for p in clip_encoder.parameters())
    x = torch.rand(1, 3, 96, 96, requires_grad=True)  # resized to 64 inside, differentiably
    clip_encoder.encode(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(EncoderError, match="list of strings"):
        clip_encoder.encode_text("one string")


def test_open_clip_local_model_folder(tmp_path: Path) -> None:
    """A folder with open_clip_config.json (own mean/std) + weights, as saved from the HF hub, whose
    architecture open_clip does not know by name: the config in the folder is all it needs."""
    open_clip = pytest.importorskip("open_clip")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(5)
        model = open_clip.CLIP(**TINY_CLIP).eval()  # built from the dict: nothing registered by name
    folder = tmp_path / "tiny-clip"
    folder.mkdir()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    cfg = {"model_cfg": TINY_CLIP, "preprocess_cfg": {"mean": list(mean), "std": list(std)}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(EncoderWeightsError, match="lacks open_clip_config.json or a weights file"):
        OpenClipEncoder("tiny", str(folder))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    enc = OpenClipEncoder("tiny", str(folder))
    assert enc.encoder_id == "open_clip:tiny@dir:tiny-clip"
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    m, s = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(
            enc.encode(x), F.normalize(model.encode_image((x - m) / s), dim=-1), atol=1e-5, rtol=1e-4
        )
        assert enc.encode_text(["tumour"]).shape == (1, 32)


def test_open_clip_missing_or_corrupt_file_errors(tmp_path: Path, clip_checkpoint) -> None:
    with pytest.raises(EncoderWeightsError, match=r"bank\.encoder\.pretrained") as err:
        OpenClipEncoder(TINY_NAME, str(tmp_path / "missing" / "clip.pt"))
    assert "does not exist" in str(err.value)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match=r"(?s)local file .*bank\.encoder\.pretrained"):
        OpenClipEncoder(TINY_NAME, str(bad))


@pytest.fixture(scope="module")
def timm_checkpoint(tmp_path_factory: pytest.TempPathFactory):
    timm = pytest.importorskip("timm")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        model = timm.create_model("test_resnet").eval()  # tiny model with a 1000-class head
    path = tmp_path_factory.mktemp("timm") / "test_resnet.pth"
    torch.save(model.state_dict(), path)
    return model, path


def test_timm_encoder_loads_local_file_without_head(timm_checkpoint) -> None:
    model, path = timm_checkpoint
    enc = build_encoder(EncoderSpec(kind="timm", model_name="test_resnet", pretrained=str(path)))
    assert isinstance(enc, TimmImageEncoder) and enc.encoder_id.startswith("timm:test_resnet@file:test_resnet.pth:")
    assert enc.dim == model.num_features and enc.input_size == 160
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, 3, 1, 1)
    x = torch.rand(3, 3, 160, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = F.normalize(model.forward_head(model.forward_features((x - mean) / std), pre_logits=True), dim=-1)
        got = enc.encode(x)
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-4)
    assert all(not p.requires_grad for p in enc.parameters()) and not enc.training
    xg = x[:1].clone().requires_grad_(True)
    enc.encode(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def test_timm_random_init_is_seeded_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    state = torch.random.get_rng_state()
    with caplog.at_level("WARNING"):
        a = TimmImageEncoder("test_resnet", None)
    b = TimmImageEncoder("test_resnet", None)
    assert torch.equal(torch.random.get_rng_state(), state)  # caller's RNG untouched
    assert a.encoder_id == "timm:test_resnet@random-seed0" and "random init" in caplog.text
    x = torch.rand(1, 3, 160, 160)
    with torch.no_grad():
        torch.testing.assert_close(a.encode(x), b.encode(x))


def test_timm_missing_file_and_bad_spec(tmp_path: Path) -> None:
    with pytest.raises(EncoderWeightsError, match=r"does not exist; set `bank\.encoder\.pretrained`"):
        TimmImageEncoder("test_resnet", str(tmp_path / "nope.pth"))
    with pytest.raises(EncoderWeightsError, match="is a folder"):
        TimmImageEncoder("test_resnet", str(tmp_path))
    with pytest.raises(EncoderError, match="unknown encoder kind"):
        EncoderSpec(kind="bogus")
    with pytest.raises(EncoderError, match="needs a model_name"):
        EncoderSpec(kind="open_clip")


def test_pretrained_setting_classification(tmp_path: Path) -> None:
    from protoseg.models.encoders.weights import WeightKind, resolve_weights

    f = tmp_path / "w.safetensors"
    f.write_bytes(b"12345")
    assert resolve_weights(None, "m").kind is WeightKind.RANDOM
    assert resolve_weights("openai", "m").kind is WeightKind.TAG
    assert resolve_weights("hf-hub:org/plip", "m").value == "hf-hub:org/plip"
    src = resolve_weights(str(f), "m")
    assert (src.kind, src.id_suffix()) == (WeightKind.FILE, "file:w.safetensors:5")
    assert resolve_weights(tmp_path, "m").kind is WeightKind.DIRECTORY
    for missing in ("weights/clip.pt", "model.pth", tmp_path / "nothing"):
        with pytest.raises(EncoderWeightsError, match="does not exist"):
            resolve_weights(missing, "m")
