"""Real H&E tiles (shared data, skipped when absent): white filtering, descriptor neighbourhoods, bank I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from protoseg.bank import BankSample, build_bank, load_bank, save_bank
from protoseg.classes import ClassSpec
from protoseg.models.encoders import HEDescriptor

torch.set_num_threads(2)
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
pytestmark = pytest.mark.skipif(not (DATA / "tiles").is_dir(), reason=f"real H&E test data not found at {DATA}")


def _rgb(rel: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(DATA / rel).convert("RGB"))


def _crops(img: np.ndarray, n: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    out = []
    while len(out) < n:
        y, x = (int(rng.integers(0, s - size)) for s in img.shape[:2])
        c = img[y : y + size, x : x + size]
        if (c.min(axis=2) > 220).mean() < 0.5:
            out.append(np.ascontiguousarray(c))
    return out


def test_descriptor_groups_crops_of_the_same_real_tissue() -> None:
    files = [
        "tiles/tissue-level0-7352-11762-7864-12274.png",
        "tiles/tissue-level2-4760-5241-8856-9338.png",
        "slides/target_image.png",
        "tiles/no-tissue-red-pen.png",
    ]
    rng = np.random.default_rng(0)
    crops, labels = [], []
    for i, f in enumerate(files):
        crops += _crops(_rgb(f), 5, 128, rng)
        labels += [i] * 5
    x = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        f = HEDescriptor(input_size=128).encode(x).numpy()
    sim = f @ f.T
    np.fill_diagonal(sim, -np.inf)
    labels_a = np.array(labels)
    assert (labels_a[sim.argmax(axis=1)] == labels_a).all()


def test_bank_from_real_tiles_drops_blank_tiles_and_round_trips(tmp_path: Path) -> None:
    names = sorted(p.name for p in (DATA / "tiles").glob("*.png"))
    samples = []
    for n in names:
        img = _rgb(f"tiles/{n}")
        label = (0, 1) if n.startswith("no-tissue") else (1, 0)
        samples.append(BankSample(img, label, f"tiles/{n}", mpp=None))
    spec = ClassSpec(names=("tissue", "other"))
    bank = build_bank(samples, spec, HEDescriptor(input_size=64), k=2, n_per_cluster=10)
    kept = {m.source.split("/")[-1] for m in bank.members}
    # blank / nearly blank tiles (white fraction > 0.7 at level 220, measured when writing this test) are gone
    for blank in (
        "almost-white-1.png",
        "almost-white-2.png",
        "no-tissue.png",
        "no-tissue2.png",
        "no-tissue-line.png",
        "high-nuclei-score-level2.png",
    ):
        assert blank not in kept
    assert {
        "tissue-level0-4302-10273-4814-10785.png",
        "no-tissue-red-pen.png",
        "no-tissue-green-pen.png",
        "low-nuclei-score-level1.png",
    } <= kept
    protos = bank.prototypes()
    assert protos.shape == (2, 2, bank.dim)
    torch.testing.assert_close(protos.norm(dim=-1), torch.ones(2, 2))
    loaded = load_bank(save_bank(bank, tmp_path / "real-bank"))
    assert torch.equal(loaded.prototypes(), protos)
