"""The Image bank dock's encoder choice, opened from Plugins > protoseg in a 1366x768 window: a timm model by
hf-hub id (read from a fake offline Hugging Face cache) and an open_clip model folder reach the bank build; a
missing id or path shows one line in the status and starts nothing. Tiny local models; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("napari")
pytest.importorskip("timm")
pytest.importorskip("open_clip")
pytestmark = [pytest.mark.gui, pytest.mark.filterwarnings("error:Private attribute access:FutureWarning")]

from tiny_models import MISSING_REPO, TIMM_REPO, use_offline_cache, write_tiny_models
from widget_support import settle, widget_screenshot


def test_bank_dock_builds_with_the_chosen_encoder(make_napari_viewer, qtbot, tmp_path: Path, monkeypatch) -> None:
    from qtpy.QtCore import QPoint

    from protoseg.data.synthetic.writers import write_bcss_dataset

    models = write_tiny_models(tmp_path / "models")
    use_offline_cache(monkeypatch, models["cache"])
    data = write_bcss_dataset(tmp_path / "ds", n_train=12, n_val=0, n_test=0, size=64, seed=0)
    viewer = make_napari_viewer(show=True)
    viewer.window.resize(1366, 768)
    _dock, widget = viewer.window.add_plugin_dock_widget("protoseg", "Image bank")
    settle(0.3)
    picker = widget.encoder
    assert not picker.name.isEnabled() and not picker.weights_row.isEnabled()  # the descriptor takes neither
    widget.folder.setText(str(data))
    widget.k.setValue(1)

    # a typo is refused in the status line before any work starts
    widget.bank_dir.setText(str(tmp_path / "never"))
    picker.set_choice("open_clip", "ViT-B-32", str(tmp_path / "no-such-weights.pt"))
    assert picker.name.isEnabled() and picker.weights_row.isEnabled()
    widget.build_btn.click()
    assert widget.job is None and "does not exist" in widget.status.text()

    # an hf-hub id that is not cached, offline: one line naming the cache and what to copy there
    picker.set_choice("timm", "", f"hf-hub:{MISSING_REPO}")
    widget.build_btn.click()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=60_000)
    status = widget.status.text()
    assert widget.bank is None and str(models["cache"]) in status and f"hf download {MISSING_REPO}" in status

    # a timm model by its hf-hub id, read from the cache offline
    widget.bank_dir.setText(str(tmp_path / "bank-timm"))
    picker.set_choice("timm", "", f"hf-hub:{TIMM_REPO}")
    widget.build_btn.click()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=120_000)
    assert widget.bank is not None, widget.status.text()
    assert widget.bank.encoder_id == f"timm:hf-hub:{TIMM_REPO}@hf-hub:{TIMM_REPO}"
    assert widget.bank.dim == models["timm"].num_features and "hf-hub:" in widget.summary.text()

    # an open_clip model folder (as `hf download --local-dir` writes it), chosen by path
    widget.bank_dir.setText(str(tmp_path / "bank-clip"))
    picker.set_choice("open_clip", "tiny", str(models["root"] / "tiny-clip"))
    widget.build_btn.click()
    qtbot.waitUntil(lambda: widget.job.finished, timeout=120_000)
    assert widget.bank is not None and widget.bank.encoder_id == "open_clip:tiny@dir:tiny-clip", widget.status.text()
    assert (tmp_path / "bank-clip" / "manifest.json").is_file()

    # fits a laptop screen: the dock leaves most of the width to the canvas, the browse buttons are inside it
    width = viewer.window.geometry()[2]
    assert widget.width() < 0.5 * width, (widget.width(), width)
    right = picker.folder_btn.mapTo(widget, QPoint(picker.folder_btn.width(), 0)).x()
    assert 0 < right <= widget.width(), (right, widget.width())
    widget_screenshot(viewer, "bank_encoder")
