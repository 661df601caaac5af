"""Image bank widget: build (dataset folder or tagged regions, with the chosen encoder, in a worker) or load a
bank, browse thumbnails per class and sub-cluster, exclude/include/pin, add a slide selection as a prototype,
re-cluster (saying what changed), go to a member on its slide (its patch outlined), save."""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Shapes
from qtpy.QtCore import QSize, Qt
from qtpy.QtGui import QIcon, QImage, QPixmap
from qtpy.QtWidgets import (
    QAbstractItemView,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSpinBox,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

import protoseg.bank as banklib  # lazy package: torch loads when a bank is first used, not with the dock
from protoseg.cancel import Cancelled, check_cancelled
from protoseg.config import ProtosegConfig
from protoseg.napari.gl_guard import RemovalGuard
from protoseg.napari.widgets._common import (
    FOLDER,
    REGIONS,
    LayerCombo,
    PathEdit,
    StatusLabel,
    WidgetError,
    box_world_center,
    layer_to_level0,
    region_sources,
    regions_changed,
    row,
    scroll_layout,
    tabify_when_docked,
)
from protoseg.napari.widgets.encoder_picker import EncoderPicker
from protoseg.napari.widgets.jobs import BackgroundJob, NapariProgress
from protoseg.napari.widgets.member_box import show_member_box
from protoseg.napari.widgets.slide_info import MppPrompt, find_slide_layer, slide_meta, slide_mpp
from protoseg.slide.pixels import as_rgb_uint8

logger = logging.getLogger(__name__)

ID_ROLE = Qt.ItemDataRole.UserRole
PIN_FRAME = (255, 200, 0)


def thumbnail_icon(thumb: np.ndarray, excluded: bool, pinned: bool) -> QIcon:
    """Icon of a member thumbnail: excluded ones greyed and faded, pinned ones framed in gold."""
    rgb = as_rgb_uint8(thumb).astype(np.float32)
    if excluded:
        rgb = 0.35 * rgb.mean(axis=2, keepdims=True).repeat(3, axis=2) + 0.65 * 200
    rgb = np.ascontiguousarray(rgb.round().clip(0, 255).astype(np.uint8))
    if pinned:
        rgb[:3], rgb[-3:], rgb[:, :3], rgb[:, -3:] = PIN_FRAME, PIN_FRAME, PIN_FRAME, PIN_FRAME
    h, w = rgb.shape[:2]
    image = QImage(rgb.data, w, h, 3 * w, QImage.Format.Format_RGB888).copy()
    return QIcon(QPixmap.fromImage(image))


class BankWidget(QWidget):
    """Curate a PBIP image bank from the viewer; the bank is an immutable ``ImageBank`` replaced on each edit."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self._gl_guard = RemovalGuard(napari_viewer, self)  # napari/Mesa crash after removing layers
        tabify_when_docked(self)  # Plugins > protoseg docks share one tab group, each at full height
        self.viewer = napari_viewer
        self.bank: banklib.ImageBank | None = None
        self.lists: list[QListWidget] = []
        self.job: BackgroundJob | None = None
        self.progress = NapariProgress()
        self.source = QComboBox()
        self.source.addItems([FOLDER, REGIONS])
        self.folder = PathEdit("dir", "training patch folder")
        self.scale = QDoubleSpinBox(decimals=3, minimum=0.05, maximum=4.0, singleStep=0.25, value=1.0)
        self.scale.setToolTip(
            "the folder's patches resampled by this factor before they are embedded (data.scale): set it to the "
            "Train dock's 'Folder patches × (resample)', so prototypes and training crops have the same pixel size"
        )
        self.regions = QComboBox()
        self.k = QSpinBox(minimum=1, maximum=50, value=ProtosegConfig().bank.k)
        self.encoder = EncoderPicker()
        self.build_btn = QPushButton("Build bank")
        self.bank_dir = PathEdit("dir", "bank folder (written by Build and Save)")
        self.load_btn, self.save_btn = QPushButton("Load"), QPushButton("Save")
        self.ckpt = PathEdit("open", "checkpoint (.pt)", "Checkpoints (*.pt)")
        self.ckpt_btn = QPushButton("Load the bank this checkpoint used")
        self.summary = QLabel("no bank loaded")
        self.summary.setWordWrap(True)  # long encoder ids (hf-hub:org/repo) wrap at / : @ instead of widening the dock
        self.tabs = QTabWidget()
        self.tabs.setMinimumHeight(260)
        self.exclude_btn, self.include_btn = QPushButton("Exclude"), QPushButton("Include")
        self.pin_btn, self.unpin_btn = QPushButton("Pin"), QPushButton("Unpin")
        self.recluster_btn = QPushButton("Re-cluster with K")
        self.slide_combo = LayerCombo(self.viewer, lambda ly: slide_meta(ly) is not None)
        self.mpp_prompt = MppPrompt(lambda: self.slide_combo.layer(), self.viewer)
        self.slide_combo.currentIndexChanged.connect(lambda *_: self.mpp_prompt.refresh())
        self.shapes_combo = LayerCombo(self.viewer, lambda ly: isinstance(ly, Shapes))
        self.class_combo = QComboBox()
        self.add_btn = QPushButton("Add selection as prototype")
        self.bar = QProgressBar()
        self.status = StatusLabel()
        self._build_layout()
        g = self.status.guard
        self.build_btn.clicked.connect(lambda: g(self.build))
        self.load_btn.clicked.connect(lambda: g(lambda: self.set_bank(banklib.load_bank(self._bank_path()))))
        self.save_btn.clicked.connect(lambda: g(self.save))
        self.ckpt_btn.clicked.connect(lambda: g(self.load_checkpoint_bank))
        for btn, fn in (
            (self.exclude_btn, "exclude"),
            (self.include_btn, "include"),
            (self.pin_btn, "pin"),
            (self.unpin_btn, "unpin"),
        ):
            btn.clicked.connect(lambda _=False, f=fn: g(lambda: self.curate(getattr(banklib, f))))
        self.recluster_btn.clicked.connect(lambda: g(self.recluster))
        self.add_btn.clicked.connect(lambda: g(self.add_selection))
        regions_changed.connect(self._refresh_regions)
        self.source.currentIndexChanged.connect(lambda *_: self.scale.setEnabled(self.source.currentText() == FOLDER))
        self._refresh_regions()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Build from", self.source)
        form.addRow("Folder", self.folder)
        form.addRow("Folder patches × (resample)", self.scale)
        form.addRow("Regions", self.regions)
        form.addRow("Sub-clusters K", self.k)
        for label, widget in self.encoder.rows():
            form.addRow(label, widget)
        form.addRow("", self.build_btn)
        form.addRow("Bank folder", self.bank_dir)
        form.addRow("", row(self.load_btn, self.save_btn))
        form.addRow("Checkpoint", self.ckpt)
        form.addRow("", self.ckpt_btn)
        add = QFormLayout()
        add.addRow("Slide", self.slide_combo)
        add.addRow("", self.mpp_prompt)
        add.addRow("Shapes", self.shapes_combo)
        add.addRow("Class", self.class_combo)
        root = scroll_layout(self)
        root.addWidget(self.bar)  # progress and feedback first: visible without scrolling in a short window
        root.addWidget(self.status)
        root.addLayout(form)
        root.addWidget(self.summary)
        root.addWidget(self.tabs, 1)
        root.addWidget(row(self.exclude_btn, self.include_btn, self.pin_btn, self.unpin_btn))
        root.addWidget(self.recluster_btn)
        root.addLayout(add)
        root.addWidget(self.add_btn)

    def _refresh_regions(self, *_: Any) -> None:
        try:
            current = self.regions.currentText()
            self.regions.clear()
            self.regions.addItems(sorted(region_sources()))
            self.regions.setCurrentText(current)
        except RuntimeError:  # deleted by Qt
            regions_changed.disconnect(self._refresh_regions)

    # ---- bank state ---------------------------------------------------------------------------
    def _need_bank(self) -> banklib.ImageBank:
        if self.bank is None:
            raise WidgetError("build or load a bank first")
        return self.bank

    def _bank_path(self) -> str:
        if not self.bank_dir.text():
            raise WidgetError("choose a bank folder")
        return self.bank_dir.text()

    def set_bank(self, bank: banklib.ImageBank) -> None:
        """Show ``bank``: a tab per class, a row of thumbnails per sub-cluster."""
        self.bank = bank
        current = self.tabs.currentIndex()
        self.tabs.clear()
        self.lists = []
        counts = bank.cluster_counts()
        for c, name in enumerate(bank.class_spec.names):
            page = QWidget()
            layout = QVBoxLayout(page)
            for j in range(bank.k):
                rows = [i for i, m in enumerate(bank.members) if m.class_index == c and m.cluster == j]
                layout.addWidget(QLabel(f"cluster {j + 1}: {counts[c, j]} active of {len(rows)}"))
                layout.addWidget(self._cluster_list(bank, rows))
            layout.addStretch(1)
            scroll = QScrollArea()
            scroll.setWidgetResizable(True)
            scroll.setWidget(page)
            self.tabs.addTab(scroll, f"{name} ({int(counts[c].sum())})")
        self.tabs.setCurrentIndex(max(0, current))
        self.class_combo.clear()
        self.class_combo.addItems(bank.class_spec.names)
        active = int(bank.active_mask().sum())
        encoder = bank.encoder_id.replace("/", "/\u200b").replace(":", ":\u200b").replace("@", "\u200b@")
        scale = "" if bank.data_scale is None else f", folder patches × {bank.data_scale:g}"
        self.summary.setText(f"{len(bank)} members ({active} active), K={bank.k}{scale}, encoder {encoder}")
        self.summary.setToolTip(bank.encoder_id)

    def _cluster_list(self, bank: banklib.ImageBank, rows: list[int]) -> QListWidget:
        lst = QListWidget()
        lst.setViewMode(QListWidget.ViewMode.IconMode)
        lst.setIconSize(QSize(64, 64))
        lst.setFlow(QListWidget.Flow.LeftToRight)
        lst.setWrapping(False)
        lst.setFixedHeight(100)
        lst.setSelectionMode(QAbstractItemView.SelectionMode.ExtendedSelection)
        lst.setMovement(QListWidget.Movement.Static)
        for i in rows:
            m = bank.members[i]
            flags = [t for t, on in (("excluded", m.excluded), ("pinned", m.pinned)) if on]
            item = QListWidgetItem(thumbnail_icon(bank.thumbnails[i], m.excluded, m.pinned), " ".join(flags))
            item.setData(ID_ROLE, m.member_id)
            where = f"{Path(m.source).name}" + (f" box {m.box}" if m.box else "")
            item.setToolTip(
                f"{m.member_id} · {where} · distance {m.distance:.3f}" + (f" · {', '.join(flags)}" if flags else "")
            )
            lst.addItem(item)
        lst.itemClicked.connect(self.go_to_member)
        self.lists.append(lst)
        return lst

    def selected_ids(self) -> list[str]:
        return [item.data(ID_ROLE) for lst in self.lists for item in lst.selectedItems()]

    def curate(self, fn: Any) -> None:
        """Apply exclude/include/pin/unpin to the selected thumbnails."""
        ids = self.selected_ids()
        if not ids:
            raise WidgetError("select thumbnails first (click, Ctrl/Shift-click for several)")
        self.set_bank(fn(self._need_bank(), ids))
        self.status.ok(f"{fn.__name__}: {len(ids)} member(s); save to keep the change")

    def recluster(self) -> Any:
        """Re-cluster every class with the chosen K and say what changed (``protoseg.bank.ReclusterReport``)."""
        before = self._need_bank()
        after = banklib.recluster(before, self.k.value())
        report = banklib.recluster_report(before, after)
        self.set_bank(after)
        logger.info("%s", report.summary())
        self.status.ok(f"{report.summary()}; save to keep the change")
        return report

    def save(self) -> Path:
        path = banklib.save_bank(self._need_bank(), self._bank_path())
        self.status.ok(f"saved to {path}")
        return path

    def load_checkpoint_bank(self) -> str:
        """Show and load the bank recorded in a checkpoint (``extra['bank_path']``)."""
        from protoseg.models.checkpoint import load_checkpoint

        path = load_checkpoint(self.ckpt.text()).extra.get("bank_path")
        if not path:
            raise WidgetError("this checkpoint used no image bank (recipe cam, or LPD without a bank)")
        self.bank_dir.setText(path)
        self.set_bank(banklib.load_bank(path))
        self.status.ok(f"checkpoint bank: {path}")
        return path

    # ---- navigation ---------------------------------------------------------------------------
    def go_to_member(self, item: QListWidgetItem) -> bool:
        """Centre the camera on a member cut from a slide that is open in the viewer and outline its patch
        there (one protoseg box layer, reused); True when it moved."""
        m = self._need_bank().members[self._need_bank().index_of([item.data(ID_ROLE)])[0]]
        if m.box is None:
            self.status.ok(f"{m.member_id} comes from the patch file {Path(m.source).name}, not from a slide")
            return False
        slide = find_slide_layer(self.viewer, m.source) if Path(m.source).exists() else None
        if slide is None:
            self.status.ok(f"{m.member_id} is on {Path(m.source).name}: open that slide to see it")
            return False
        self.viewer.camera.center = box_world_center(m.box, slide)  # type: ignore[arg-type]
        size = max(m.box[2] * abs(slide.scale[-1]), m.box[3] * abs(slide.scale[-2]))  # type: ignore[index]
        self.viewer.camera.zoom = min(getattr(self.viewer.canvas, "size", (600, 800))) / (4.0 * size)
        show_member_box(self.viewer, slide, m.box, m.member_id)
        self.status.ok(f"{m.member_id} on {slide.name} at {m.box}")
        return True

    # ---- background work ------------------------------------------------------------------------
    def _run(self, work: Any, message: str) -> BackgroundJob:
        if self.job is not None and self.job.running:
            raise WidgetError("wait for the running bank job to finish")

        def on_events(events: list[tuple[int, int]]) -> None:
            done, total = events[-1]
            self.bar.setMaximum(max(1, total))
            self.bar.setValue(done)
            self.progress.update(done, total, "protoseg bank")

        def on_done(bank: banklib.ImageBank) -> None:
            self.progress.close()
            self.bar.setValue(self.bar.maximum())
            self.set_bank(bank)
            self.status.ok(message)

        def on_error(exc: BaseException) -> None:
            self.progress.close()
            if isinstance(exc, Cancelled):  # the job's cancel token was set: nothing changed
                self.bar.setValue(0)
                self.status.ok(f"{exc}; the bank is unchanged")
            else:
                self.status.error(str(exc))

        self.bar.setValue(0)
        self.status.ok("working…")
        self.job = BackgroundJob(work, on_events, on_done, on_error, parent=self).start()
        return self.job

    def cancel(self) -> None:
        """Stop the running bank job at its next progress step (a cancelled build leaves no bank)."""
        if self.job is not None and self.job.running:
            self.job.cancel()

    def closeEvent(self, event: Any) -> None:
        self.cancel()
        super().closeEvent(event)

    def build(self) -> BackgroundJob:
        """Build from the dataset folder or the chosen tagged regions into the bank folder (worker thread)."""
        from protoseg.train.jobs import build_bank_job

        out, cfg = self._bank_path(), ProtosegConfig()
        regions = None
        if self.source.currentText() == REGIONS:
            regions = region_sources().get(self.regions.currentText())
            if regions is None:
                raise WidgetError("no tagged regions yet: use 'Use as training data' in the Region tagging widget")
        elif not self.folder.text():
            raise WidgetError("choose the training patch folder to build from")
        spec = self.encoder.spec()  # checked here: a typo shows in the status line before any work starts
        encoder = replace(cfg.bank.encoder, kind=spec.kind, model_name=spec.model_name, pretrained=spec.pretrained)
        bank = replace(cfg.bank, k=self.k.value(), encoder=encoder)
        scale = float(self.scale.value()) if regions is None else 1.0  # regions are read at run.mpp
        cfg = replace(cfg, data=replace(cfg.data, root=self.folder.text(), scale=scale), bank=bank)

        def work(report: Any, cancel: Any) -> banklib.ImageBank:
            def progress(done: int, total: int) -> None:
                report((done, total))
                check_cancelled(cancel, "bank build")

            return build_bank_job(cfg, out, regions, progress)

        return self._run(work, f"bank built and saved to {out}")

    def add_selection(self) -> BackgroundJob:
        """Each selected shape's bounding box on the slide becomes a member of the chosen class."""
        from protoseg.bank.encoder_lookup import encoder_for_bank
        from protoseg.slide import open_slide

        bank, slide, shapes = self._need_bank(), self.slide_combo.layer(), self.shapes_combo.layer()
        if slide is None or shapes is None or not len(shapes.selected_data):
            raise WidgetError("choose a slide and a Shapes layer, and select the shapes to add")
        boxes = []
        for i in sorted(shapes.selected_data):
            rc = layer_to_level0(shapes.data[i], shapes, slide)
            (y0, x0), (y1, x1) = np.floor(rc.min(axis=0)), np.ceil(rc.max(axis=0))
            boxes.append((int(x0), int(y0), int(x1 - x0), int(y1 - y0)))
        c, path = self.class_combo.currentIndex(), slide_meta(slide)["path"]
        mpps = [m.mpp for m in bank.members if m.mpp]
        mpp = float(np.median(mpps)) if mpps else None
        scan_mpp = slide_mpp(slide)  # the file's, else the one the user gave for this slide
        if mpp is not None and scan_mpp is None:
            self.mpp_prompt.refresh()
            raise WidgetError("this slide records no microns-per-pixel: enter its scan resolution above first")

        def work(report: Any, cancel: Any) -> banklib.ImageBank:
            encoder, handle, out = encoder_for_bank(bank), open_slide(path), bank
            try:
                for n, box in enumerate(boxes):
                    check_cancelled(cancel, "adding prototypes")
                    out = banklib.add_from_slide(out, handle, box, c, encoder, mpp=mpp, slide_mpp=scan_mpp)
                    report((n + 1, len(boxes)))
            finally:
                handle.close()
            return out

        return self._run(work, f"added {len(boxes)} prototype(s) to {bank.class_spec.names[c]}; save to keep them")
