"""build_bank selection / clustering / N_K trimming, prototypes, and curation (hand-computed values)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from protoseg.bank import (
    BankCurationError,
    BankError,
    BankMember,
    BankSample,
    ImageBank,
    add_from_slide,
    add_member,
    build_bank,
    exclude,
    include,
    pin,
    recluster,
    recompute_prototypes,
    unpin,
    white_fraction,
)
from protoseg.classes import ClassSpec
from protoseg.models.encoders import ImageEncoder

torch.set_num_threads(2)
SPEC = ClassSpec(names=("A", "B"))
FAMILIES = {"red": (200, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 200)}


class MeanColour(ImageEncoder):
    """Test encoder: the embedding is the mean RGB colour, so unit features are known by hand."""

    def __init__(self, encoder_id: str = "test-mean-colour") -> None:
        super().__init__()
        self.encoder_id, self.dim, self.input_size = encoder_id, 3, 8

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return images.mean(dim=(2, 3))


def unit(v) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def solid(rgb, size: int = 16) -> np.ndarray:
    return np.broadcast_to(np.asarray(rgb, np.uint8), (size, size, 3)).copy()


def colour_samples() -> tuple[list[BankSample], dict[str, tuple[int, int, int]]]:
    """Class A: 4 jittered colours in each of 3 families; class B: 2 samples; plus label noise."""
    rng = np.random.default_rng(0)
    samples, colours = [], {}
    for fam, base in FAMILIES.items():
        for i in range(4):
            c = tuple(int(v) for v in np.clip(np.array(base) + rng.integers(-15, 16, 3), 0, 255))
            name = f"A-{fam}-{i}"
            colours[name] = c
            samples.append(BankSample(solid(c), (1, 0), name, box=(i, 0, 16, 16), mpp=0.5))
    for i, c in enumerate([(120, 60, 150), (100, 70, 160)]):
        colours[f"B-{i}"] = c
        samples.append(BankSample(solid(c), (0, 1), f"B-{i}"))
    samples.append(BankSample(solid((90, 90, 90)), (1, 1), "multi"))
    samples.append(BankSample(solid((90, 90, 90)), (0, 0), "none"))
    return samples, colours


@pytest.fixture()
def built(caplog: pytest.LogCaptureFixture) -> tuple[ImageBank, dict[str, tuple[int, int, int]]]:
    samples, colours = colour_samples()
    with caplog.at_level(logging.WARNING):
        bank = build_bank(samples, SPEC, MeanColour(), k=3, n_per_cluster=2)
    assert "class B has only 2 samples" in caplog.text
    return bank, colours


def _cluster_of(bank: ImageBank, family: str) -> int:
    clusters = {m.cluster for m in bank.members if m.source.startswith(f"A-{family}")}
    assert len(clusters) == 1
    return clusters.pop()


def test_white_fraction_counts_pixels_above_220_in_all_channels() -> None:
    img = np.zeros((4, 5, 3), np.uint8)
    img[0, :] = 255  # 5 white pixels
    img[1, :2] = (230, 230, 230)  # 2 more
    img[2, 0] = (230, 230, 100)  # not white: one channel dark
    img[3, 0] = (221, 221, 221)  # white (> 220)
    assert white_fraction(img) == pytest.approx(8 / 20)


def test_white_patches_dropped_by_threshold() -> None:
    def patch(frac_white: float) -> np.ndarray:
        a = solid((150, 60, 120), 10)
        a.reshape(-1, 3)[: round(frac_white * 100)] = 245
        return a

    samples = [BankSample(patch(f), (1, 0), f"w{f}") for f in (0.0, 0.6, 0.7, 0.8, 1.0)]
    calls: list[int] = []
    bank = build_bank(samples, SPEC, MeanColour(), k=1, white_threshold=0.7, batch_size=2, progress=calls.append)
    assert sorted(m.source for m in bank.members) == ["w0.0", "w0.6", "w0.7"]
    assert calls == [2, 5]  # after the first full batch of 2 kept patches, then at the end


def test_only_single_class_samples_used(built) -> None:
    bank, _ = built
    sources = {m.source for m in bank.members}
    assert "multi" not in sources and "none" not in sources
    assert {m.class_index for m in bank.members if m.source.startswith("B")} == {1}
    with pytest.raises(BankError, match="has 3 entries"):
        build_bank([BankSample(solid((1, 2, 3)), (1, 0, 0), "x")], SPEC, MeanColour())


def test_clusters_and_nearest_members_kept(built) -> None:
    bank, colours = built
    assert bank.k == 3 and bank.encoder_id == "test-mean-colour"
    assert len({_cluster_of(bank, f) for f in FAMILIES}) == 3
    for fam in FAMILIES:
        names = [n for n in colours if n.startswith(f"A-{fam}")]
        feats = np.stack([unit(colours[n]) for n in names])
        centre = unit(feats.mean(axis=0))
        dist = 1.0 - feats @ centre
        expected = {names[i] for i in np.argsort(dist)[:2]}
        got = {m.source: m for m in bank.members if m.source.startswith(f"A-{fam}")}
        assert set(got) == expected
        for n in expected:
            assert got[n].distance == pytest.approx(dist[names.index(n)], abs=1e-5)
            assert got[n].box is not None and got[n].mpp == 0.5
    rows = {m.source: i for i, m in enumerate(bank.members)}
    for name, i in rows.items():
        np.testing.assert_allclose(bank.features[i], unit(colours[name]), atol=1e-5)
        assert (bank.thumbnails[i] == np.asarray(colours[name], np.uint8)).all()
    assert bank.thumbnails.shape[1:] == (64, 64, 3)


def test_prototypes_equal_hand_means_with_fallback(built, caplog: pytest.LogCaptureFixture) -> None:
    bank, colours = built
    with caplog.at_level(logging.WARNING):
        protos = bank.prototypes()
    assert protos.shape == (2, 3, 3) and protos.dtype == torch.float32
    for fam in FAMILIES:
        kept = [m.source for m in bank.members if m.source.startswith(f"A-{fam}")]
        ref = unit(np.mean([unit(colours[n]) for n in kept], axis=0))
        np.testing.assert_allclose(protos[0, _cluster_of(bank, fam)].numpy(), ref, atol=1e-5)
    b_ref = unit(np.mean([unit(colours["B-0"]), unit(colours["B-1"])], axis=0))
    empty = ({0, 1, 2} - {m.cluster for m in bank.members if m.class_index == 1}).pop()
    np.testing.assert_allclose(protos[1, empty].numpy(), b_ref, atol=1e-5)
    assert "sub-cluster" in caplog.text and "class mean" in caplog.text


def test_exclude_include_pin_change_prototypes(built) -> None:
    bank, colours = built
    red = [m.member_id for m in bank.members if m.source.startswith("A-red")]
    keep_src = next(m.source for m in bank.members if m.member_id == red[1])
    ex = exclude(bank, red[0])
    assert ex.members[bank.index_of([red[0]])[0]].excluded and not bank.members[0].excluded  # input untouched
    np.testing.assert_allclose(ex.prototypes()[0, _cluster_of(bank, "red")].numpy(), unit(colours[keep_src]), atol=1e-5)
    np.testing.assert_allclose(include(ex, [red[0]]).prototypes().numpy(), bank.prototypes().numpy(), atol=1e-6)
    pinned = pin(ex, red[0])
    assert pinned.members[bank.index_of([red[0]])[0]].pinned and not pinned.members[bank.index_of([red[0]])[0]].excluded
    with pytest.raises(BankCurationError, match="pinned"):
        exclude(pinned, red)
    assert not unpin(pinned, red[0]).members[bank.index_of([red[0]])[0]].pinned
    with pytest.raises(BankCurationError, match="unknown bank member ids"):
        exclude(bank, ["nope"])
    both = exclude(bank, red)
    # an emptied sub-cluster falls back to the mean of the class's remaining members
    np.testing.assert_allclose(
        recompute_prototypes(both)[0, _cluster_of(bank, "red")].numpy(), _class_mean(both, 0), atol=1e-5
    )
    all_b = [m.member_id for m in bank.members if m.class_index == 1]
    with pytest.raises(BankError, match="no active bank members"):
        exclude(bank, all_b).prototypes()


def _class_mean(bank: ImageBank, c: int) -> np.ndarray:
    rows = [i for i, m in enumerate(bank.members) if m.class_index == c and m.active]
    return unit(np.mean([unit(bank.features[i]) for i in rows], axis=0))


def test_pinned_member_counts_even_if_flagged_excluded() -> None:
    feats = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    members = (
        BankMember("a", 0, 0, "s"),
        BankMember("b", 0, 0, "s", excluded=True, pinned=True),
        BankMember("c", 0, 0, "s", excluded=True),
    )
    bank = ImageBank(ClassSpec(names=("X",)), "e", 1, members, feats, np.zeros((3, 4, 4, 3), np.uint8))
    np.testing.assert_allclose(bank.prototypes()[0, 0].numpy(), unit([1, 1, 0]), atol=1e-6)


def test_add_member_goes_to_nearest_prototype(built) -> None:
    bank, _colours = built
    enc = MeanColour()
    added = add_member(bank, solid((30, 30, 210), 20), 0, enc, source="user.png", box=(1, 2, 20, 20))
    new = added.members[-1]
    assert len(added) == len(bank) + 1 and new.added_by_user and new.source == "user.png" and new.box == (1, 2, 20, 20)
    assert new.cluster == _cluster_of(bank, "blue")
    assert new.member_id not in {m.member_id for m in bank.members}
    np.testing.assert_allclose(added.features[-1], unit((30, 30, 210)), atol=1e-5)
    proto = bank.prototypes()[0, new.cluster].numpy()
    assert new.distance == pytest.approx(1 - float(unit((30, 30, 210)) @ proto), abs=1e-5)
    assert (added.thumbnails[-1] == np.array([30, 30, 210], np.uint8)).all()
    forced = add_member(bank, solid((30, 30, 210)), 0, enc, cluster=_cluster_of(bank, "red"))
    assert forced.members[-1].cluster == _cluster_of(bank, "red")
    with pytest.raises(BankCurationError, match="encoder"):
        add_member(bank, solid((1, 2, 3)), 0, MeanColour("other-encoder"))
    with pytest.raises(BankCurationError, match="class index"):
        add_member(bank, solid((1, 2, 3)), 5, enc)


class FakeSlide:
    """Duck-typed ``SlideLike``: level-0 canvas, read_region returns an RGBA PIL image like openslide."""

    level_count, level_dimensions, level_downsamples = 1, ((100, 100),), (1.0,)

    def __init__(self, mpp: float | None = 0.25) -> None:
        self.canvas = np.zeros((100, 100, 3), np.uint8)
        self.canvas[:, :50] = (210, 20, 25)
        self.canvas[:, 50:] = (20, 25, 205)
        self.path, self.mpp, self.calls = "/slides/fake.svs", mpp, []

    def read_region(self, location, level, size):
        self.calls.append((tuple(location), level, tuple(size)))
        (x, y), (w, h) = location, size
        rgba = np.concatenate([self.canvas[y : y + h, x : x + w], np.full((h, w, 1), 255, np.uint8)], axis=2)
        return Image.fromarray(rgba, mode="RGBA")


def test_add_from_slide_reads_level0_region(built) -> None:
    bank, _ = built
    slide = FakeSlide()
    out = add_from_slide(bank, slide, (60, 10, 30, 20), 0, MeanColour())
    assert slide.calls == [((60, 10), 0, (30, 20))]
    new = out.members[-1]
    assert (new.source, new.box, new.mpp, new.added_by_user) == ("/slides/fake.svs", (60, 10, 30, 20), 0.25, True)
    assert new.cluster == _cluster_of(bank, "blue")
    np.testing.assert_allclose(out.features[-1], unit((20, 25, 205)), atol=1e-5)
    resized = add_from_slide(bank, FakeSlide(), (0, 0, 40, 40), 0, MeanColour(), mpp=0.5)
    assert resized.members[-1].mpp == 0.5 and resized.members[-1].cluster == _cluster_of(bank, "red")


def test_add_from_slide_without_file_mpp_uses_the_given_scan_resolution(built) -> None:
    bank, _ = built
    with pytest.raises(BankCurationError, match="records no microns-per-pixel"):
        add_from_slide(bank, FakeSlide(mpp=None), (0, 0, 40, 40), 0, MeanColour(), mpp=0.5)
    out = add_from_slide(bank, FakeSlide(mpp=None), (0, 0, 40, 40), 0, MeanColour(), mpp=0.5, slide_mpp=0.25)
    same = add_from_slide(bank, FakeSlide(mpp=0.25), (0, 0, 40, 40), 0, MeanColour(), mpp=0.5)
    np.testing.assert_array_equal(out.thumbnails[-1], same.thumbnails[-1])  # read at 0.5 µm/px both times
    assert out.members[-1].mpp == 0.5


def test_recluster_recovers_groups_and_keeps_flags(built) -> None:
    bank, _colours = built
    scrambled = bank.replace(
        members=tuple(
            BankMember(m.member_id, m.class_index, i % (bank.k if m.class_index == 0 else 2), m.source, m.box, m.mpp)
            for i, m in enumerate(bank.members)
        )
    )
    red0 = next(m.member_id for m in bank.members if m.source.startswith("A-red"))
    green0 = next(m.member_id for m in bank.members if m.source.startswith("A-green"))
    curated = pin(exclude(scrambled, red0), green0)
    out = recluster(curated)
    for fam in FAMILIES:  # the remaining members of each family share a cluster again
        assert len({m.cluster for m in out.members if m.source.startswith(f"A-{fam}") and m.active}) == 1
    assert len({m.cluster for m in out.members if m.class_index == 0 and m.active}) == 3
    flags = {m.member_id: (m.excluded, m.pinned) for m in out.members}
    assert flags[red0] == (True, False) and flags[green0] == (False, True)
    red_active = next(m for m in out.members if m.source.startswith("A-red") and m.active)
    assert next(m for m in out.members if m.member_id == red0).cluster == red_active.cluster
    fewer = recluster(bank, k=1)
    assert fewer.k == 1 and {m.cluster for m in fewer.members} == {0}
    np.testing.assert_allclose(fewer.prototypes()[0, 0].numpy(), _class_mean(bank, 0), atol=1e-5)


def test_recluster_report_counts_clusters_moves_and_prototypes(built) -> None:
    """Issue 20 item 4: what a re-clustering changed, per class, by hand."""
    from protoseg.bank import recluster_report

    bank, _colours = built
    fewer = recluster(bank, k=1)
    report = recluster_report(bank, fewer)
    a, b = report.classes
    rows_a = [m for m in bank.members if m.class_index == 0]
    assert (a.name, a.members, a.clusters_after) == ("A", len(rows_a), 1)
    assert a.clusters_before == len({m.cluster for m in rows_a if m.active}) == 3
    assert a.moved == sum(m.cluster != 0 for m in rows_a)  # everyone lands in cluster 0
    assert b.moved == sum(m.cluster != 0 for m in bank.members if m.class_index == 1)
    assert report.moved == a.moved + b.moved and report.prototypes == 2 and report.problem is None
    assert a.distance_after == pytest.approx(np.mean([m.distance for m in fewer.members if m.class_index == 0]))
    assert a.distance_after > a.distance_before  # one centre per class: members lie farther from it
    text = report.summary()
    assert "K=1 (was 3)" in text and f"A 3→1 sub-clusters, {a.moved}/{a.members} moved" in text
    assert "2 prototypes recomputed (2 classes × 1)" in text
    same = recluster_report(fewer, recluster(fewer, k=1))
    assert same.moved == 0 and "K=1:" in same.summary()  # nothing to move
    only_b = exclude(fewer, [m.member_id for m in fewer.members if m.class_index == 0])
    assert "no active bank members" in recluster_report(only_b, recluster(only_b, k=1)).summary()
    with pytest.raises(BankError, match="same bank members"):
        recluster_report(
            bank,
            only_b.replace(
                members=only_b.members[:-1], features=only_b.features[:-1], thumbnails=only_b.thumbnails[:-1]
            ),
        )
