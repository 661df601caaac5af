"""Image bank widget driven like a user: build from a tiny synthetic dataset in a worker, browse and
exclude thumbnails (prototypes change), save/load, add a slide selection as a prototype, click its
thumbnail to jump there, re-cluster, and load the bank a checkpoint used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari")
pytestmark = pytest.mark.gui

from widget_support import SAMPLE, open_sample, widget_screenshot

# world (row, col) µm rectangle over tissue of the sample slide (0.5 µm/px): 80 x 100 µm
BOX_WORLD = np.array([[600.0, 700.0], [600.0, 800.0], [680.0, 800.0], [680.0, 700.0]])


def _items(widget):
    return [(lst, lst.item(i)) for lst in widget.lists for i in range(lst.count())]


def _expected_prototype(bank, c: int, j: int) -> np.ndarray:
    """Mean of the unit features of the active members of (class c, cluster j), renormalised."""
    rows = [
        i for i, m in enumerate(bank.members) if m.class_index == c and m.cluster == j and (m.pinned or not m.excluded)
    ]
    f = bank.features[rows].astype(np.float64)
    mean = (f / np.linalg.norm(f, axis=1, keepdims=True)).mean(axis=0)
    return mean / np.linalg.norm(mean)


def test_build_curate_save_add_and_navigate(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    from protoseg.bank import load_bank
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.napari.widgets.bank import BankWidget

    data = write_bcss_dataset(tmp_path / "ds", n_train=40, n_val=0, n_test=0, size=64, seed=0)
    viewer = make_napari_viewer(show=True)
    slide = open_sample(viewer)
    widget = BankWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Image bank", area="right")

    widget.folder.setText(str(data))
    widget.k.setValue(2)
    widget.bank_dir.setText(str(tmp_path / "bank"))
    from widget_support import Heartbeat, record_stall

    beat = Heartbeat()
    beat.reset()
    widget.build_btn.click()
    assert widget.job is not None, widget.status.text()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=60_000)
    record_stall("Image bank: Build (incl. thumbnails)", beat)
    beat.stop()
    bank = widget.bank
    assert bank is not None and (tmp_path / "bank" / "manifest.json").is_file(), widget.status.text()
    assert widget.bar.value() == widget.bar.maximum() > 0
    # one tab per class, one thumbnail list per (class, cluster) holding exactly that cluster's members
    assert [widget.tabs.tabText(i).split()[0] for i in range(widget.tabs.count())] == ["TUM", "STR", "LYM", "NEC"]
    assert len(widget.lists) == 4 * 2
    for n, lst in enumerate(widget.lists):
        c, j = divmod(n, 2)
        ids = [lst.item(i).data(widget_id_role()) for i in range(lst.count())]
        assert ids == [m.member_id for m in bank.members if m.class_index == c and m.cluster == j]

    # exclude one member of a cluster with >= 2 members: its prototype becomes the mean of the rest
    counts = bank.cluster_counts()
    c, j = map(int, np.argwhere(counts >= 2)[0])
    lst = widget.lists[c * 2 + j]
    victim = lst.item(0).data(widget_id_role())
    before = bank.prototypes().numpy()
    lst.item(0).setSelected(True)
    widget.exclude_btn.click()
    bank = widget.bank
    assert bank.members[bank.index_of([victim])[0]].excluded
    after = bank.prototypes().numpy()
    np.testing.assert_allclose(after[c, j], _expected_prototype(bank, c, j), atol=1e-5)
    assert not np.allclose(after[c, j], before[c, j], atol=1e-4)
    mask = np.ones(after.shape[:2], bool)
    mask[c, j] = False
    np.testing.assert_allclose(after[mask], before[mask], atol=1e-6)  # other prototypes unchanged
    assert widget.lists[c * 2 + j].item(0).text() == "excluded"

    # save / load round trip keeps the curation
    widget.save_btn.click()
    reloaded = load_bank(tmp_path / "bank")
    assert [m.excluded for m in reloaded.members] == [m.excluded for m in bank.members]
    np.testing.assert_allclose(reloaded.features, bank.features)
    widget.set_bank(bank.replace(members=bank.members[:0], features=bank.features[:0], thumbnails=bank.thumbnails[:0]))
    widget.load_btn.click()
    assert len(widget.bank) == len(bank)

    # add a rectangle drawn over the slide as a TUM prototype (level-0 box = world / mpp)
    shapes = viewer.add_shapes(
        [BOX_WORLD],
        shape_type="rectangle",
        name="prototype boxes",
        units=slide.units,
        edge_color="yellow",
        face_color="transparent",
        edge_width=4,
    )
    shapes.selected_data = {0}
    widget.shapes_combo.set_layer(shapes)
    widget.slide_combo.set_layer(slide)
    widget.class_combo.setCurrentText("TUM")
    widget.add_btn.click()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=60_000)
    new = widget.bank.members[-1]
    assert len(widget.bank) == len(bank) + 1, widget.status.text()
    assert new.added_by_user and new.class_index == 0 and new.box == (1400, 1200, 200, 160)
    assert Path(new.source).resolve() == SAMPLE.resolve()

    # clicking its thumbnail centres the camera on the box: world centre = (y + h/2, x + w/2) * 0.5
    lst, item = next((lst, it) for lst, it in _items(widget) if it.data(widget_id_role()) == new.member_id)
    viewer.camera.center = (0.0, 0.0)
    widget.tabs.setCurrentIndex(0)
    lst.scrollToItem(item)
    qtbot.mouseClick(lst.viewport(), _left(), pos=lst.visualItemRect(item).center())
    np.testing.assert_allclose(viewer.camera.center[-2:], (640.0, 750.0), atol=1e-6)
    assert viewer.camera.zoom > 1.0  # zoomed in on a 100 µm box
    # ... and outlines the member's patch on the slide, in protoseg's one box layer
    box_layer = _box_layers(viewer)[0]
    assert box_layer.metadata["protoseg"] == {
        "role": "bank-member-box",
        "member_id": new.member_id,
        "source": str(SAMPLE.resolve()),
    }
    np.testing.assert_allclose(_world_box(box_layer), BOX_WORLD, atol=1e-6)
    assert viewer.layers.selection.active is not box_layer  # the user's active layer stays active
    qtbot.mouseClick(lst.viewport(), _left(), pos=lst.visualItemRect(item).center())  # again: replaced
    assert len(_box_layers(viewer)) == 1 and len(box_layer.data) == 1
    viewer.layers.remove(box_layer)  # the user deleted it: the next click makes a new one
    widget.go_to_member(item)
    assert len(_box_layers(viewer)) == 1 and len(_box_layers(viewer)[0].data) == 1
    # a member from a patch file does not move the camera, and says why
    other = next(it for _, it in _items(widget) if it.data(widget_id_role()) != new.member_id)
    assert widget.go_to_member(other) is False
    assert "patch file" in widget.status.text()

    widget.tabs.setCurrentIndex(0)
    img = widget_screenshot(viewer, "bank")
    assert img.std() > 10

    # re-cluster with K=1: one list per class, every member in cluster 0; the status line says what changed
    before = widget.bank
    widget.k.setValue(1)
    widget.recluster_btn.click()
    assert widget.bank.k == 1 and {m.cluster for m in widget.bank.members} == {0}
    assert len(widget.lists) == 4
    text = widget.status.text()
    assert text.startswith("re-clustered with K=1 (was 2): ") and "4 prototypes recomputed (4 classes × 1)" in text
    for c, name in enumerate(before.class_spec.names):
        rows = [m for m in before.members if m.class_index == c]
        moved = sum(m.cluster != 0 for m in rows)
        n_before = len({m.cluster for m in rows if m.active})
        assert f"{name} {n_before}→1 sub-clusters, {moved}/{len(rows)} moved" in text
    assert "save to keep the change" in text


def test_cancelled_build_leaves_no_bank(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    from protoseg.cancel import Cancelled
    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.napari.widgets.bank import BankWidget

    data = write_bcss_dataset(tmp_path / "ds", n_train=16, n_val=0, n_test=0, size=64, seed=0)
    widget = BankWidget(make_napari_viewer())
    widget.folder.setText(str(data))
    widget.bank_dir.setText(str(tmp_path / "bank"))
    errors: list[BaseException] = []
    job = widget.build()
    on_error = job.on_error
    job.on_error = lambda exc: (errors.append(exc), on_error(exc))
    widget.cancel()  # the build stops at its first progress report, before saving
    qtbot.waitUntil(lambda: job.finished, timeout=60_000)
    assert len(errors) == 1 and isinstance(errors[0], Cancelled)
    assert widget.bank is None and not (tmp_path / "bank" / "manifest.json").exists()
    assert "cancelled" in widget.status.text() and widget.status.styleSheet() == ""  # a notice, not an error


def test_bank_of_a_checkpoint(make_napari_viewer, tmp_path: Path) -> None:
    from protoseg.bank import BankMember, ImageBank, save_bank
    from protoseg.classes import BCSS_WSSS
    from protoseg.models.checkpoint import Checkpoint, Stage, save_checkpoint
    from protoseg.napari.widgets.bank import BankWidget

    rng = np.random.default_rng(0)
    members = tuple(BankMember(f"m{i:06d}", i % 4, 0, f"patch{i}.png") for i in range(8))
    bank = ImageBank(
        BCSS_WSSS,
        "he-descriptor-v1",
        1,
        members,
        rng.normal(size=(8, 5)).astype(np.float32),
        rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8),
    )
    save_bank(bank, tmp_path / "bank")
    ckpt = Checkpoint(Stage.STAGE1, {}, {}, BCSS_WSSS, extra={"bank_path": str(tmp_path / "bank")})
    save_checkpoint(ckpt, tmp_path / "best.pt")
    save_checkpoint(ckpt.with_updates(extra={"bank_path": None}), tmp_path / "cam.pt")

    viewer = make_napari_viewer()
    widget = BankWidget(viewer)
    widget.ckpt.setText(str(tmp_path / "best.pt"))
    widget.ckpt_btn.click()
    assert widget.bank_dir.text() == str(tmp_path / "bank")
    assert [m.member_id for m in widget.bank.members] == [m.member_id for m in members]
    assert "8 members" in widget.summary.text()
    widget.ckpt.setText(str(tmp_path / "cam.pt"))
    widget.ckpt_btn.click()
    assert "no image bank" in widget.status.text()
    widget.exclude_btn.click()  # nothing selected: a message, no exception
    assert "select thumbnails" in widget.status.text()


def _box_layers(viewer) -> list:
    return [ly for ly in viewer.layers if (ly.metadata.get("protoseg") or {}).get("role") == "bank-member-box"]


def _world_box(layer) -> np.ndarray:
    """The layer's one rectangle in world (row, col) coordinates, from its public scale and translate."""
    return np.asarray(layer.data[0]) * np.asarray(layer.scale) + np.asarray(layer.translate)


def widget_id_role():
    from protoseg.napari.widgets.bank import ID_ROLE

    return ID_ROLE


def _left():
    from qtpy.QtCore import Qt

    return Qt.MouseButton.LeftButton


def test_encoder_spec_from_bank_encoder_id() -> None:
    from protoseg.bank import BankError
    from protoseg.bank.encoder_lookup import encoder_for_bank, spec_from_encoder_id
    from protoseg.models.encoders.spec import EncoderKind

    assert spec_from_encoder_id("he-descriptor-v1").kind is EncoderKind.DESCRIPTOR
    assert spec_from_encoder_id("he-descriptor-v1@96px").input_size == 96
    s = spec_from_encoder_id("open_clip:ViT-B-32@openai")
    assert (s.kind, s.model_name, s.pretrained) == (EncoderKind.OPEN_CLIP, "ViT-B-32", "openai")
    s = spec_from_encoder_id("timm:resnet50@random-seed0")
    assert (s.kind, s.model_name, s.pretrained) == (EncoderKind.TIMM, "resnet50", None)
    with pytest.raises(BankError, match="local weights"):
        spec_from_encoder_id("timm:resnet50@file:w.pth:123")
    with pytest.raises(BankError, match="unknown"):
        spec_from_encoder_id("mystery-encoder")
    assert encoder_for_bank("he-descriptor-v1@96px").encoder_id == "he-descriptor-v1@96px"


def test_build_resamples_folder_patches_through_the_plugin_dock(make_napari_viewer, qtbot, tmp_path: Path) -> None:
    """Plugins > protoseg > Image bank: 'Folder patches × (resample)' builds the bank from the folder's patches
    resampled as the Train dock trains on them (data.scale), records it, and shows it in the summary; the box
    is off for tagged regions (read at run.mpp)."""
    import json

    from protoseg.data.synthetic.writers import write_bcss_dataset
    from protoseg.napari.widgets.bank import FOLDER, REGIONS

    data = write_bcss_dataset(tmp_path / "ds", n_train=40, n_val=0, n_test=0, size=64, seed=0)
    viewer = make_napari_viewer(show=True)
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Image bank")
    widget.source.setCurrentText(REGIONS)
    assert not widget.scale.isEnabled()
    widget.source.setCurrentText(FOLDER)
    assert widget.scale.isEnabled() and widget.scale.value() == 1.0
    widget.folder.setText(str(data))
    widget.scale.setValue(0.5)
    widget.bank_dir.setText(str(tmp_path / "bank"))
    widget.build_btn.click()
    assert widget.job is not None, widget.status.text()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=60_000)
    assert widget.bank is not None, widget.status.text()
    assert widget.bank.data_scale == 0.5
    assert json.loads((tmp_path / "bank" / "manifest.json").read_text())["data_scale"] == 0.5
    assert "folder patches × 0.5" in widget.summary.text()
    widget_screenshot(viewer, "bank_resample")
