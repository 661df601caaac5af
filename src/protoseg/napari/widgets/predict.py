"""Predict widget: checkpoint + slide layer -> lazy per-class CAM / class-mask overlays computed in the
background as the user pans, whole-slide batch to OME-Zarr (progress, cancel, resume), exports, legend."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qtpy.QtCore import QObject, Qt, QTimer, Signal
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QLabel,
    QProgressBar,
    QPushButton,
    QSlider,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from protoseg.cancel import Cancelled, CancelLike
from protoseg.classes import ClassSpec
from protoseg.export import AreaRow, ExportFormat, default_output, export_format, export_prediction, read_area_csv
from protoseg.napari.overlays import Placement, lazy_layer_data, zarr_layer_data
from protoseg.napari.preferences import prefer_protoseg_reader
from protoseg.napari.scheduler import ChunkScheduler
from protoseg.napari.widgets._common import (
    DEVICES,
    BackgroundJob,
    LayerCombo,
    MppPrompt,
    NapariProgress,
    PathEdit,
    StatusLabel,
    WidgetError,
    checkpoint_ready,
    guard_triton_llvm_clash,
    row,
    scroll_layout,
    set_slide_mpp,
    slide_meta,
    slide_mpp,
)
from protoseg.napari.widgets.legend import Legend

logger = logging.getLogger(__name__)

EXPORTS = {  # format -> (button, file filter); default names come from protoseg.export.default_output
    ExportFormat.OME_ZARR: ("OME-Zarr", "OME-Zarr folder (*.zarr)"),
    ExportFormat.OME_TIFF: ("OME-TIFF", "OME-TIFF (*.ome.tif)"),
    ExportFormat.GEOJSON: ("GeoJSON", "GeoJSON (*.geojson)"),
    ExportFormat.AREAS: ("Areas CSV", "CSV (*.csv)"),
}


# ---- whole-slide batch (Qt-free) ---------------------------------------------------------------------
@dataclass(frozen=True)
class BatchOutcome:
    """Result of :func:`run_batch`: the output folder, the library's summary (None if cancelled), progress."""

    path: Path
    result: Any
    cancelled: bool
    done: int
    total: int


def run_batch(
    predictor: Any,
    slide: Any,
    out_dir: str | Path,
    *,
    report: Callable[[tuple[int, int]], None],
    cancel: CancelLike | None = None,
    **kwargs: Any,
) -> BatchOutcome:
    """``predict_slide_to_omezarr`` (resuming) reporting (done, total); ``cancel`` stops it at the next chunk
    (finished chunks are kept, so running it again resumes)."""
    from protoseg.infer import predict_slide_to_omezarr

    state = [0, 0]

    def progress(done: int, total: int) -> None:
        state[:] = [int(done), int(total)]
        report((int(done), int(total)))

    try:
        result = predict_slide_to_omezarr(
            predictor, slide, out_dir, resume=True, progress=progress, cancel=cancel, **kwargs
        )
    except Cancelled:
        logger.info("batch prediction to %s cancelled at %d/%d chunks", out_dir, *state)
        return BatchOutcome(Path(out_dir), None, True, state[0], state[1])
    return BatchOutcome(Path(out_dir), result, False, result.chunks_total, result.chunks_total)


class _Bridge(QObject):
    """Carries 'a chunk is ready' from the overlay worker thread to the GUI thread (queued signal)."""

    ready = Signal()


class PredictWidget(QWidget):
    """napari dock widget: overlays for the view, whole-slide batch, exports (never blocks the viewer)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        prefer_protoseg_reader()  # slide files open with protoseg, without a reader dialog
        self.viewer = napari_viewer
        self.checkpoint = PathEdit("open", "checkpoint .pt from training", "protoseg checkpoint (*.pt *.pth);;All (*)")
        self.slide = LayerCombo(self.viewer, lambda ly: ly._type_string == "image" and slide_meta(ly) is not None)
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
        self.job: BackgroundJob | None = None
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
        root.addLayout(form)
        root.addWidget(self.show_btn)
        root.addWidget(row(QLabel("Overlay opacity"), self.opacity))
        root.addWidget(self.legend)
        root.addWidget(batch)
        root.addWidget(export)
        root.addWidget(self.status)
        root.addStretch(1)

    def _connect(self) -> None:
        self.checkpoint.edit.editingFinished.connect(lambda: self.status.guard(self._load_classes))
        self.slide.currentIndexChanged.connect(self._on_slide)
        self.slide_mpp.valueChanged.connect(self._on_slide_mpp)
        self.class_combo.currentIndexChanged.connect(self.set_visible_class)
        self.show_btn.clicked.connect(lambda: self.status.guard(lambda: self.show_overlays(background=True)))
        self.opacity.valueChanged.connect(self.set_overlay_opacity)
        self._view_timer.timeout.connect(self.update_view)
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
            from protoseg.models.checkpoint import load_checkpoint

            ckpt = load_checkpoint(path)
            self._ckpt_stamp, self._ckpt_mpp, self._ckpt_classes = stamp, ckpt.mpp, ckpt.classes
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
        """Add the overlay layers; ``staggered`` adds one per event-loop turn (each napari layer costs ~0.1 s of
        GUI time: one at a time keeps the viewer responsive)."""

        self._clear_overlays()
        self.scheduler = ChunkScheduler(lazy, on_ready=self._bridge.ready.emit)
        placement = Placement.on_slide(layer.scale, layer.translate, lazy.layout.geom.scale, _units(layer))
        data = self._one_cam(lazy_layer_data(self.scheduler, self.classes, placement, self._shown_class()))
        if staggered:
            self._adding = True
            todo = list(data)

            def step() -> None:
                if todo:
                    self.overlays.append(self.viewer.add_layer(create_overlay_layer(todo.pop(0))))
                    QTimer.singleShot(0, step)
                else:
                    self._adding = False
                    self._overlays_added(layer, lazy)

            QTimer.singleShot(0, step)
            return self.overlays
        self.overlays = [self.viewer.add_layer(create_overlay_layer(ld)) for ld in data]
        return self._overlays_added(layer, lazy)

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

    # ---- what is on screen ------------------------------------------------------------------------
    def update_view(self) -> bool:
        """Tell the scheduler which overlay chunks are on screen (level and pixel window of a visible overlay
        layer, as napari chose them); work that left the view is dropped. True when the view changed."""
        if self.scheduler is None or self.scheduler.closed:
            return False
        shown = [ly for ly in self.overlays if ly.visible and ly in self.viewer.layers]
        if not shown:
            key: tuple = (-1,)
        else:
            ly = shown[-1]
            corners = [int(v) for v in ly.corner_pixels[:, -2:].ravel()]
            key = (int(ly.data_level) if ly.multiscale else 0, corners[0], corners[2] + 1, corners[1], corners[3] + 1)
        if key == self._view_key:
            return False
        self._view_key = key
        if key[0] < 0:
            self.scheduler.set_view(1, 0, 0, 0, 0)  # nothing visible: compute nothing
        else:
            self.scheduler.set_view(*key)
        return True

    def set_overlay_opacity(self, value: int | float) -> None:
        """Opacity (0-100 %) of every overlay layer (the dock's slider)."""
        self.opacity.blockSignals(True)
        self.opacity.setValue(round(value))
        self.opacity.blockSignals(False)
        for ly in self.overlays:
            ly.opacity = float(value) / 100.0

    def _style_overlays(self) -> None:
        """Overlay opacity from the dock's slider, read-only mask layer, class legend on the canvas."""
        self.set_overlay_opacity(self.opacity.value())
        masks = [ly for ly in self.overlays if ly._type_string == "labels"]
        for ly in masks:
            make_read_only(ly)
        if masks and self.classes is not None:
            add_canvas_legend(self.viewer, self.classes, staggered=True)

    def _shown_class(self) -> int:
        return max(0, self.class_combo.currentIndex())

    def _one_cam(self, data: list[Any]) -> list[Any]:
        """Keep one CAM layer (the chosen class) + the mask: each napari layer costs GUI time to add, so the
        dock's class choice swaps the CAM layer's data instead of toggling one layer per class."""
        self._cam_data = [ld for ld in data if ld[2] == "image"]
        cam = self._cam_data[min(self._shown_class(), len(self._cam_data) - 1)]
        cam[1]["visible"] = True
        return [cam, *(ld for ld in data if ld[2] != "image")]

    def cam_layer(self) -> Any | None:
        """The CAM overlay layer (None before 'Show overlays')."""
        cams = [ly for ly in self.overlays if ly.metadata.get("protoseg_overlay", {}).get("kind") == "cam"]
        return cams[0] if cams else None

    def set_visible_class(self, index: int) -> None:
        """Show the CAM of class ``index`` in the CAM layer (its data, colormap and name)."""
        cam = self.cam_layer()
        if cam is not None and 0 <= index < len(self._cam_data):
            data, meta, _ = self._cam_data[index]
            if cam.metadata.get("protoseg_overlay", {}).get("index") != index:
                cam.data = data
                cam.colormap = meta["colormap"]
                cam.contrast_limits = meta["contrast_limits"]
                cam.name = meta["name"]
                cam.metadata = meta["metadata"]
            cam.visible = True
        if self.class_combo.currentIndex() != index:
            self.class_combo.setCurrentIndex(index)

    def _on_chunk_ready(self) -> None:
        if not self._refresh_timer.isActive():  # throttle: at most one redraw per interval while chunks arrive
            self._refresh_timer.start()

    def _refresh_overlays(self) -> None:
        for ly in self.overlays:
            if ly.visible and ly in self.viewer.layers:
                ly.refresh()
        if self.scheduler is not None and self.scheduler.last_error:
            self.status.error(f"overlay computation failed: {self.scheduler.last_error}")

    def _clear_overlays(self) -> None:
        self._view_timer.stop()
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        old, self.overlays = self.overlays, []
        remove_canvas_legend(self.viewer)
        for ly in old:
            if ly in self.viewer.layers:
                self.viewer.layers.remove(ly)

    def _on_layer_removed(self, event: Any) -> None:
        if event.value in self.overlays:
            self.overlays.remove(event.value)
            if not self.overlays:
                remove_canvas_legend(self.viewer)
                if self.scheduler is not None:
                    self.scheduler.close()

    # ---- whole slide -------------------------------------------------------------------------------
    def output_path(self) -> Path:
        """The batch output folder: the typed one, or ``predictions/<slide>-<hash>.zarr`` next to the checkpoint."""
        if self.out.text():
            return Path(self.out.text())
        _, path, _ = self._slide_inputs()
        from protoseg.infer.identity import default_prediction_name  # unique per slide and checkpoint

        ckpt = Path(self.checkpoint.text()).resolve()
        return ckpt.parent / "predictions" / default_prediction_name(path, ckpt)

    def start_batch(self) -> BackgroundJob:
        """Predict the whole slide into the OME-Zarr output in a worker (resumes a cancelled run)."""
        if self.job is not None and self.job.running:
            raise WidgetError("a whole-slide run is already going; cancel it first")
        key = self._predictor_key()
        layer, path, override = self._slide_inputs()
        self._check_mpp(self._ckpt_mpp, layer, override)
        out = self.output_path()
        self.out.setText(str(out))
        kwargs = {"slide_mpp": override, "tissue_only": self.tissue.isChecked(), "chunk": self.chunk.value()}

        def work(report: Any, cancel: Any) -> Any:
            report((0, 0))  # the progress bar moves (busy) while the model loads
            predictor = self._predictor_for(key)
            return run_batch(predictor, path, out, report=report, cancel=cancel, **kwargs)

        self.outcome = None
        self.bar.setRange(0, 0)  # busy at once, while the model loads; the first chunk gives the real range
        self.batch_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.ok(f"predicting the whole slide into {out} …")
        self.job = BackgroundJob(work, self._on_batch_events, self._on_batch_done, self._on_batch_error, parent=self)
        return self.job.start()

    def cancel_batch(self) -> None:
        """Stop the whole-slide run after the current chunk; finished chunks are kept for resuming."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.ok("cancelling… (finished chunks are kept; 'Whole slide' resumes)")

    def _on_batch_events(self, items: list[tuple[int, int]]) -> None:
        done, total = items[-1]
        self.bar.setMaximum(max(0, total))  # 0: busy indicator while the model loads and the run starts
        self.bar.setValue(done)
        if total:
            self.progress.update(done, total, "protoseg whole-slide prediction")

    def _batch_finished(self) -> None:
        self.progress.close()
        self.batch_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_batch_done(self, outcome: Any) -> None:
        self.outcome = outcome
        self._batch_finished()
        if outcome.cancelled:
            self.status.ok(f"cancelled at {outcome.done}/{outcome.total} chunks; 'Whole slide' resumes from there")
            return
        r = outcome.result
        self.status.ok(
            f"whole slide done in {r.seconds:.1f} s ({r.chunks_predicted} chunks predicted, "
            f"{r.chunks_resumed} resumed): {outcome.path}"
        )
        self.open_batch_result(outcome.path)

    def _on_batch_error(self, exc: BaseException) -> None:
        self._batch_finished()
        self.status.error(f"whole-slide prediction failed: {exc}")

    def open_batch_result(self, path: str | Path) -> list[Any]:
        """Replace the overlays with layers read from a finished OME-Zarr prediction."""

        from protoseg.infer import open_prediction

        pred = open_prediction(path)
        layer, _, _ = self._slide_inputs()
        self._clear_overlays()
        if self.classes is None or self.classes != pred.classes:
            self.classes = pred.classes
            self.legend.set_classes(pred.classes)
            self.class_combo.clear()
            self.class_combo.addItems(pred.classes.names)
        placement = Placement.on_slide(layer.scale, layer.translate, pred.scale, _units(layer))
        data = self._one_cam(zarr_layer_data(pred, placement, self._shown_class()))
        self.overlays = [self.viewer.add_layer(create_overlay_layer(ld)) for ld in data]
        self._style_overlays()
        self.result_path = Path(path)
        return self.overlays

    # ---- exports -----------------------------------------------------------------------------------
    def _result(self) -> Path:
        path = self.result_path or (Path(self.out.text()) if self.out.text() else None)
        if path is None or not path.is_dir():
            raise WidgetError("no whole-slide result yet: run 'Whole slide' first (exports read its OME-Zarr)")
        return path

    def export(self, kind: ExportFormat | str, out: str | Path, wait: bool = True) -> Any:
        """Write an export (an ``ExportFormat`` or its value: "ome-zarr", "ome-tiff", "geojson", "areas") of the
        batch result to ``out``.

        ``wait=False`` runs it in a worker (what the buttons do) and returns the job.
        """
        kind = export_format(kind)
        src = self._result()
        if wait:
            path = export_prediction(src, kind, out)
            self._exported(kind, path)
            return path
        job = BackgroundJob(
            lambda report, cancel: export_prediction(src, kind, out),
            on_done=lambda p: self._exported(kind, p),
            on_error=lambda e: self.status.error(f"export failed: {e}"),
            parent=self,
        )
        self.status.ok(f"writing {EXPORTS[kind][0]} …")
        return job.start()

    def _exported(self, kind: ExportFormat, path: Path) -> None:
        self.status.ok(f"wrote {path}")
        if kind is ExportFormat.AREAS:
            self.show_areas(read_area_csv(path))

    def show_areas(self, rows: list[AreaRow]) -> None:
        """Fill the area table with the tissue classes (class, mm², % of tissue)."""
        tissue = [r for r in rows if r.tissue_fraction is not None]
        self.areas.setRowCount(len(tissue))
        for i, r in enumerate(tissue):
            for j, text in enumerate((r.name, f"{r.area_mm2:.4f}", f"{100 * r.tissue_fraction:.1f}")):
                self.areas.setItem(i, j, QTableWidgetItem(text))
        self.areas.resizeColumnsToContents()

    def _export_dialog(self, kind: ExportFormat) -> None:
        src = self._result()
        label, file_filter = EXPORTS[kind]
        out, _ = QFileDialog.getSaveFileName(self, f"Export {label}", str(default_output(src, kind)), file_filter)
        if out:
            self.export(kind, out, wait=False)

    def closeEvent(self, event: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.close()
        if self.job is not None and self.job.running:
            self.job.cancel()
        super().closeEvent(event)


def make_read_only(layer: Any) -> Any:
    """Keep a computed overlay Labels layer read-only (no paint tools; painting would edit a model output).

    Before the layer is added this also hides its paint-brush and polygon overlays, which a read-only layer
    never shows: napari then does not build their GL visuals (most of the GUI time of adding a Labels layer).
    """
    for key in ("polygon", "brush_stroke"):
        overlay = getattr(layer, "_overlays", {}).get(key)
        if overlay is not None:
            overlay.visible = False
    layer.editable = False
    layer.events.editable.connect(lambda _e=None: setattr(layer, "editable", False) if layer.editable else None)
    return layer


def create_overlay_layer(layer_data: Any) -> Any:
    """A napari layer from overlay layer data; the mask Labels layer is made read-only before it is added."""
    from napari.layers import Layer

    layer = Layer.create(*layer_data)
    return make_read_only(layer) if layer._type_string == "labels" else layer


LEGEND_KEY = "protoseg_legend_"


def add_canvas_legend(viewer: Any, classes: ClassSpec, staggered: bool = False) -> list[Any]:
    """Class names in their colours in the canvas's top-right corner (one napari text overlay per class), so
    a screenshot of the canvas can be read; replaces an earlier legend. ``staggered`` adds one text per
    event-loop turn (napari builds a GL text visual for each)."""
    from napari.components.overlays import TextOverlay

    remove_canvas_legend(viewer)
    overlays = [
        TextOverlay(
            text=f"■ {name}", color=[v / 255 for v in rgb] + [1.0], position="top_right", font_size=11, visible=True
        )
        for name, rgb in zip(classes.names, classes.colors)
    ]
    todo = list(enumerate(overlays))

    def step() -> None:
        i, overlay = todo.pop(0)
        viewer.canvas.overlays[f"{LEGEND_KEY}{i}"] = overlay
        if todo and staggered:
            QTimer.singleShot(0, step)

    while todo and not staggered:
        step()
    if staggered and todo:
        QTimer.singleShot(0, step)
    return overlays


def remove_canvas_legend(viewer: Any) -> None:
    for key in [k for k in viewer.canvas.overlays if str(k).startswith(LEGEND_KEY)]:
        del viewer.canvas.overlays[key]


def _units(layer: Any) -> Any:
    units = getattr(layer, "units", None)
    return None if units is None else tuple(str(u) for u in units)
