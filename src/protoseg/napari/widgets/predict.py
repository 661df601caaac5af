"""Predict widget: checkpoint + slide layer -> lazy per-class CAM / class-mask overlays computed in the
background as the user pans, whole-slide batch to OME-Zarr (progress, cancel, resume), exports, legend."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from napari.layers import Image
from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QVBoxLayout,
    QWidget,
)

from protoseg.classes import ClassSpec
from protoseg.napari.gl_guard import RemovalGuard
from protoseg.napari.overlays import Placement, lazy_layer_data
from protoseg.napari.scheduler import ChunkScheduler
from protoseg.napari.widgets._common import (
    DEVICES,
    LayerCombo,
    PathEdit,
    StatusLabel,
    WidgetError,
    checkpoint_facts,
    checkpoint_ready,
    row,
    scroll_layout,
    tabify_when_docked,
)
from protoseg.napari.widgets.correct import CorrectBox
from protoseg.napari.widgets.jobs import BackgroundJob, NapariProgress, ProcessJob, guard_triton_llvm_clash
from protoseg.napari.widgets.legend import Legend
from protoseg.napari.widgets.overlay_layers import (
    add_layer_quietly,
    add_layers_in_turns,
    create_overlay_layer,
    layer_units,
)
from protoseg.napari.widgets.overlay_view import OverlayViewSection
from protoseg.napari.widgets.slide_info import MppPrompt, set_slide_mpp, slide_meta, slide_mpp
from protoseg.napari.widgets.whole_slide import EXPORTS, WholeSlideSection

logger = logging.getLogger(__name__)


_gc_lock = threading.Lock()
_gc_holds = [0]


@contextmanager
def bulk_allocations() -> Iterator[None]:
    """Allocate many long-lived objects (imports, a model) without a full garbage collection in the middle.

    A full collection scans every object of the process (napari + torch: 0.3-0.8 s holding the GIL, the
    viewer frozen even when a worker thread triggers it). Here collection waits until the block ends; its
    objects then join the oldest generation without counting as new pressure for it (``gc.freeze`` +
    ``gc.unfreeze``), so garbage made meanwhile is freed by the next regular full collection. When
    ``gl_guard`` has frozen the older objects already, unfreezing would undo that: the block's objects then
    simply age like any others (a full collection no longer scans the frozen ones).
    """
    with _gc_lock:
        _gc_holds[0] += 1
        disabled = _gc_holds[0] == 1 and gc.isenabled()
        if disabled:
            gc.disable()
    try:
        yield
    finally:
        with _gc_lock:
            _gc_holds[0] -= 1
            if disabled:
                if not gc.get_freeze_count():
                    gc.freeze()
                    gc.unfreeze()
                gc.enable()


class _Bridge(QObject):
    """Carries 'a chunk is ready' from the overlay worker thread to the GUI thread (queued signal)."""

    ready = Signal()


class PredictWidget(OverlayViewSection, WholeSlideSection, QWidget):
    """napari dock widget: overlays for the view, whole-slide batch, exports (never blocks the viewer)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self._gl_guard = RemovalGuard(napari_viewer, self)  # napari/Mesa crash after removing layers
        tabify_when_docked(self)  # Plugins > protoseg docks share one tab group, each at full height
        self.viewer = napari_viewer
        self.checkpoint = PathEdit("open", "checkpoint .pt from training", "protoseg checkpoint (*.pt *.pth);;All (*)")
        self.slide = LayerCombo(self.viewer, lambda ly: isinstance(ly, Image) and slide_meta(ly) is not None)
        self.mpp_hint = MppPrompt(lambda: self.slide.layer(), self.viewer)
        self.slide_mpp = QDoubleSpinBox(decimals=4, minimum=0.0, maximum=100.0, singleStep=0.05, value=0.0)
        self.slide_mpp.setSpecialValueText("from slide")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.batch = QSpinBox(minimum=1, maximum=1024, value=16)
        self.tta = QCheckBox("Flip TTA")
        self.tissue = QCheckBox("Tissue only")
        self.tissue.setChecked(True)
        self.chunk = QSpinBox(minimum=64, maximum=4096, singleStep=64, value=512)
        self.class_combo = QComboBox()
        self.show_btn = QPushButton("Show overlays")
        self.view_btn, self.view_stop = QPushButton("Predict this view"), QPushButton("Stop")
        self.view_btn.setToolTip(
            "compute the whole visible area at the model's resolution in the background, centre first; the "
            "overview fills in as chunks land (at the model's zoom the overlay follows the view by itself)"
        )
        self.view_btn.setEnabled(False)
        self.view_stop.setEnabled(False)
        self.view_info = QLabel("")
        self.view_info.setWordWrap(True)
        self.legend = Legend()
        self.out = PathEdit("save", "output .zarr folder (default: next to the checkpoint)", "OME-Zarr (*.zarr)")
        self.batch_btn, self.cancel_btn = QPushButton("Whole slide"), QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.export_btns = {k: QPushButton(v[0]) for k, v in EXPORTS.items()}
        self.areas = QTableWidget(0, 3)
        self.areas.setHorizontalHeaderLabels(["class", "mm²", "% tissue"])
        self.areas.setMaximumHeight(150)
        self.status = StatusLabel()
        self.classes: ClassSpec | None = None
        self.overlays: list[Any] = []
        self.scheduler: ChunkScheduler | None = None
        self.job: ProcessJob | None = None
        self.outcome: Any = None
        self.result_path: Path | None = None
        self.progress = NapariProgress()
        self._predictor: tuple[tuple, Any] | None = None
        self._bridge = _Bridge(self)
        self._refresh_timer = QTimer(self, singleShot=True, interval=150)
        self._view_timer = QTimer(self, interval=100)  # follows the camera: which overlay chunks are on screen
        self._view_key: tuple | None = None
        self._overlay_job: BackgroundJob | None = None
        self._adding = False
        self._cam_data: list[Any] = []
        self._ckpt_stamp: tuple | None = None
        self._ckpt_mpp: float | None = None
        self._ckpt_classes: ClassSpec | None = None
        self.opacity = QSlider(Qt.Orientation.Horizontal, minimum=0, maximum=100, value=60)
        self.opacity.setToolTip("opacity of the CAM and mask overlays (not of the slide)")
        self.correct = CorrectBox(self)  # correct and retrain: corrections, retrain, review
        self._build_layout()
        self._connect()
        self._on_slide()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Checkpoint", self.checkpoint)
        form.addRow("Slide layer", self.slide)
        form.addRow("", self.mpp_hint)
        form.addRow("Slide mpp (µm/px)", self.slide_mpp)
        form.addRow("Device", self.device)
        form.addRow("Batch size", self.batch)
        form.addRow("Chunk (px)", self.chunk)
        form.addRow("", row(self.tta, self.tissue))
        form.addRow("Show CAM of", self.class_combo)
        batch = QGroupBox("Whole slide")
        bl = QVBoxLayout(batch)
        bl.addWidget(self.out)
        bl.addWidget(row(self.batch_btn, self.cancel_btn))
        bl.addWidget(self.bar)
        export = QGroupBox("Export")
        el = QVBoxLayout(export)
        el.addWidget(row(*self.export_btns.values()))
        el.addWidget(self.areas)
        root = scroll_layout(self)
        # the action and its feedback first: visible without scrolling in a short window
        root.addWidget(self.show_btn)
        root.addWidget(row(self.view_btn, self.view_stop))
        root.addWidget(self.view_info)
        root.addWidget(self.status)
        root.addWidget(row(QLabel("Overlay opacity"), self.opacity))
        root.addWidget(self.legend)
        root.addWidget(self.correct)
        root.addLayout(form)
        root.addWidget(batch)
        root.addWidget(export)
        root.addStretch(1)

    def _connect(self) -> None:
        self.checkpoint.edit.editingFinished.connect(lambda: self.status.guard(self._load_classes))
        self.slide.currentIndexChanged.connect(self._on_slide)
        self.slide_mpp.valueChanged.connect(self._on_slide_mpp)
        self.class_combo.currentIndexChanged.connect(self.set_visible_class)
        self.show_btn.clicked.connect(lambda: self.status.guard(lambda: self.show_overlays(background=True)))
        self.opacity.valueChanged.connect(self.set_overlay_opacity)
        self._view_timer.timeout.connect(self.update_view)
        self.view_btn.clicked.connect(lambda: self.status.guard(self.predict_view))
        self.view_stop.clicked.connect(self.stop_view_prediction)
        self.batch_btn.clicked.connect(lambda: self.status.guard(self.start_batch))
        self.cancel_btn.clicked.connect(self.cancel_batch)
        for kind, btn in self.export_btns.items():
            btn.clicked.connect(lambda _=False, k=kind: self.status.guard(lambda: self._export_dialog(k)))
        self._bridge.ready.connect(self._on_chunk_ready)
        self._refresh_timer.timeout.connect(self._refresh_overlays)
        self.viewer.layers.events.removed.connect(self._on_layer_removed)
        checkpoint_ready.connect(self._on_checkpoint_ready)

    # ---- inputs ---------------------------------------------------------------------------------
    def set_checkpoint(self, path: str | Path) -> ClassSpec:
        """Use a checkpoint file: its classes fill the legend and the CAM class choice."""
        self.checkpoint.setText(str(path))
        return self._load_classes()

    def _on_checkpoint_ready(self, path: str) -> None:
        try:
            self.status.guard(lambda: self.set_checkpoint(path))
        except RuntimeError:  # the widget was deleted by Qt: stop listening
            checkpoint_ready.disconnect(self._on_checkpoint_ready)

    def _load_classes(self) -> ClassSpec:
        path = self.checkpoint.text()
        if not path:
            raise WidgetError("choose a checkpoint (.pt) written by training")
        resolved = Path(path).resolve()
        stamp = (str(resolved), resolved.stat().st_mtime_ns) if resolved.is_file() else None
        if stamp is None or stamp != self._ckpt_stamp:
            facts = checkpoint_facts(path)  # a training job's report, else the file (loads torch)
            self._ckpt_stamp, self._ckpt_mpp, self._ckpt_classes = stamp, facts.mpp, facts.classes
        classes = self._ckpt_classes
        if classes != self.classes:
            self.classes = classes
            self.legend.set_classes(classes)
            self.class_combo.blockSignals(True)
            self.class_combo.clear()
            self.class_combo.addItems(classes.names)
            self.class_combo.blockSignals(False)
        return classes

    def _on_slide(self, *_: Any) -> None:
        self.mpp_hint.refresh()

    def _on_slide_mpp(self, value: float) -> None:
        """A value typed in 'Slide mpp' for a slide without mpp is remembered for that slide (every widget)."""
        layer = self.slide.layer()
        if value and layer is not None and not slide_meta(layer).get("mpp"):
            self.status.guard(lambda: set_slide_mpp(layer, float(value)))

    def _slide_inputs(self) -> tuple[Any, str, float | None]:
        layer = self.slide.layer()
        if layer is None:
            raise WidgetError("no slide layer: open a slide with the protoseg reader first")
        override = float(self.slide_mpp.value()) or None
        if override is None and not slide_meta(layer).get("mpp"):
            override = slide_mpp(layer)  # the scan resolution the user gave for this slide
        return layer, slide_meta(layer)["path"], override

    def predictor(self) -> Any:
        """The Predictor for the current checkpoint/device/batch/TTA (rebuilt only when they change)."""
        return self._predictor_for(self._predictor_key())

    def _predictor_key(self) -> tuple:
        """What the Predictor depends on, read from the form (GUI thread)."""
        self._load_classes()
        path = Path(self.checkpoint.text()).resolve()
        return (str(path), path.stat().st_mtime_ns, self.device.currentText(), self.batch.value(), self.tta.isChecked())

    def _predictor_for(self, key: tuple) -> Any:
        """Build (or reuse) the Predictor for ``key``; safe in a worker thread (touches no widget)."""
        guard_triton_llvm_clash()  # building the model may import torchvision
        from protoseg.infer import Predictor

        if self._predictor is None or self._predictor[0] != key:
            self._predictor = (key, Predictor(Path(key[0]), device=key[2], batch_size=key[3], tta=key[4]))
        return self._predictor[1]

    def _check_mpp(self, model_mpp: float | None, layer: Any, override: float | None) -> None:
        if model_mpp is not None and override is None and not slide_meta(layer).get("mpp"):
            raise WidgetError(
                f"{layer.name} has no microns-per-pixel metadata and the model expects "
                f"{model_mpp:g} µm/px: set 'Slide mpp' to the scan resolution "
                "(e.g. 0.25 for 40x, 0.5 for 20x)"
            )

    # ---- lazy overlays ---------------------------------------------------------------------------
    def show_overlays(self, background: bool = False) -> list[Any] | BackgroundJob:
        """Add per-class CAM layers and the class-mask Labels layer, computed on demand for what is on screen.

        ``background=True`` (the button) loads the model and opens the slide in a worker and adds the layers
        when ready (returns the job); otherwise it does it here and returns the layers.
        """
        layer, path, override = self._slide_inputs()
        key = self._predictor_key()
        self._check_mpp(self._ckpt_mpp, layer, override)
        tissue, chunk = self.tissue.isChecked(), self.chunk.value()

        def work(report: Any, cancel: Any) -> Any:
            with bulk_allocations():
                from protoseg.infer import LazyPrediction

                report("loading the model")
                predictor = self._predictor_for(key)
                report("opening the slide")
                import pandas  # noqa: F401 - napari's Labels layer imports it (1.5 s): not on the GUI thread

                return LazyPrediction(predictor, path, slide_mpp=override, chunk=chunk, tissue_only=tissue)

        if not background:
            return self._add_overlays(layer, work(lambda _m: None, None))
        if not self.overlays_ready:
            raise WidgetError("overlays are being prepared; wait a moment")
        self.show_btn.setEnabled(False)
        self.status.ok("preparing overlays: loading the model …")

        def done(lazy: Any) -> None:
            self.show_btn.setEnabled(True)
            self.status.guard(lambda: self._add_overlays(layer, lazy, staggered=True))

        def failed(exc: BaseException) -> None:
            self.show_btn.setEnabled(True)
            self.status.error(str(exc))

        self._overlay_job = BackgroundJob(
            work, lambda items: self.status.ok(f"preparing overlays: {items[-1]} …"), done, failed, parent=self
        )
        return self._overlay_job.start()

    def _add_overlays(self, layer: Any, lazy: Any, staggered: bool = False) -> list[Any]:
        """Add the overlay layers; ``staggered`` builds and adds them one step per event-loop turn (a napari
        layer costs ~0.1 s of GUI time to build and as much to add: one at a time keeps the viewer responsive)."""

        self._clear_overlays()
        generation = self._overlay_generation
        self.scheduler = ChunkScheduler(lazy, on_ready=self._bridge.ready.emit)
        placement = Placement.on_slide(layer.scale, layer.translate, lazy.layout.geom.scale, layer_units(layer))
        data = self._one_cam(lazy_layer_data(self.scheduler, self.classes, placement, self._shown_class()))
        for _, meta, _ in data:
            meta["opacity"] = self.opacity.value() / 100.0  # set up front: changing it later redraws thumbnails
        if not staggered:
            self.overlays = [add_layer_quietly(self.viewer, create_overlay_layer(ld)) for ld in data]
            return self._overlays_added(layer, lazy)
        self._adding = True

        def stale() -> bool:  # cleared (or replaced) while the layers were being added
            return generation != self._overlay_generation

        def finish() -> None:
            self._adding = False
            if not stale():
                self._overlays_added(layer, lazy)

        add_layers_in_turns(self.viewer, data, self.overlays, finish, stale)
        return self.overlays

    @property
    def overlays_ready(self) -> bool:
        """True when no overlay preparation (model loading, adding layers) is under way."""
        job = self._overlay_job
        return (job is None or job.finished) and not self._adding

    def _overlays_added(self, layer: Any, lazy: Any) -> list[Any]:
        self._style_overlays()
        self.viewer.layers.selection.active = layer
        res = f"{lazy.mpp:g} µm/px" if lazy.mpp else "the slide's native resolution"
        self.status.ok(
            f"overlays at {res}, computed for what is on screen when zoomed in to that resolution; zoomed out "
            "they show what is computed so far ('Whole slide' computes everything)"
        )
        self._view_key = None
        self._view_timer.start()
        self.update_view()
        return self.overlays

    def closeEvent(self, event: Any) -> None:
        self.correct.close()
        if self.scheduler is not None:
            self.scheduler.close()
        if self.job is not None and self.job.running:
            self.job.cancel()
        super().closeEvent(event)
