"""Whole-slide section of the Predict widget: batch run into OME-Zarr (progress, cancel, resume), opening
its result as overlays, and the exports of that result (OME-Zarr, OME-TIFF, GeoJSON, area table)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QFileDialog, QTableWidgetItem

from protoseg.export import (
    AreaRow,
    ExportFormat,
    ObjectType,
    default_output,
    export_format,
    export_prediction,
    read_area_csv,
)
from protoseg.napari.overlays import Placement, zarr_layer_data
from protoseg.napari.widgets._common import WidgetError
from protoseg.napari.widgets.jobs import BackgroundJob, ProcessJob, warm_imports
from protoseg.napari.widgets.overlay_layers import create_overlay_layer, layer_units

#: the child-process job of 'Whole slide' (Qt-free; the viewer process never runs the prediction itself)
WHOLE_SLIDE_JOB = "protoseg.napari.widgets.batch:whole_slide_job"
EXPORTS = {  # format -> (button, file filter); default names come from protoseg.export.default_output
    ExportFormat.OME_ZARR: ("OME-Zarr", "OME-Zarr folder (*.zarr)"),
    ExportFormat.OME_TIFF: ("OME-TIFF", "OME-TIFF (*.ome.tif)"),
    ExportFormat.GEOJSON: ("GeoJSON", "GeoJSON (*.geojson)"),
    ExportFormat.AREAS: ("Areas CSV", "CSV (*.csv)"),
}
#: the GeoJSON save dialog's file types: which QuPath object type the export writes
GEOJSON_TYPES = {
    "QuPath annotations (*.geojson)": ObjectType.ANNOTATION,
    "QuPath detections (*.geojson)": ObjectType.DETECTION,
}


class WholeSlideSection:
    """Mixin of :class:`~protoseg.napari.widgets.predict.PredictWidget` (a QWidget): its 'Whole slide' and
    'Export' boxes. The widget provides the form, the predictor, the overlays and the status line."""

    def output_path(self) -> Path:
        """The batch output folder: the typed one, or ``predictions/<slide>-<hash>.zarr`` next to the checkpoint."""
        if self.out.text():
            return Path(self.out.text())
        _, path, _ = self._slide_inputs()
        from protoseg.infer.identity import default_prediction_name  # unique per slide and checkpoint

        ckpt = Path(self.checkpoint.text()).resolve()
        return ckpt.parent / "predictions" / default_prediction_name(path, ckpt)

    def start_batch(self) -> ProcessJob:
        """Predict the whole slide into the OME-Zarr output in a child process (resumes a cancelled run)."""
        if self.job is not None and self.job.running:
            raise WidgetError("a whole-slide run is already going; cancel it first")
        key = self._predictor_key()
        layer, path, override = self._slide_inputs()
        self._check_mpp(self._ckpt_mpp, layer, override)
        out = self.output_path()
        self.out.setText(str(out))
        kwargs = {
            "checkpoint": key[0],
            "device": key[2],
            "batch_size": key[3],
            "tta": key[4],
            "slide": str(path),
            "out_dir": str(out),
            "slide_mpp": override,
            "tissue_only": self.tissue.isChecked(),
            "chunk": self.chunk.value(),
        }
        self.outcome = None
        self.bar.setRange(0, 0)  # busy at once, while the model loads; the first chunk gives the real range
        self.batch_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.ok(f"predicting the whole slide into {out} …")
        # opening the result adds Labels layers (napari imports pandas) and reads OME-Zarr: load those now
        warm_imports("pandas", "zarr", "protoseg.infer.omezarr", "protoseg.napari.overlays")
        self.job = ProcessJob(
            WHOLE_SLIDE_JOB, kwargs, self._on_batch_events, self._on_batch_done, self._on_batch_error, parent=self
        )
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
        placement = Placement.on_slide(layer.scale, layer.translate, pred.scale, layer_units(layer))
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

    def export(
        self,
        kind: ExportFormat | str,
        out: str | Path,
        wait: bool = True,
        object_type: ObjectType | str = ObjectType.ANNOTATION,
    ) -> Any:
        """Write an export (an ``ExportFormat`` or its value: "ome-zarr", "ome-tiff", "geojson", "areas") of the
        batch result to ``out``; GeoJSON objects are QuPath ``object_type`` ("annotation" or "detection").

        ``wait=False`` runs it in a worker (what the buttons do) and returns the job.
        """
        kind = export_format(kind)
        src = self._result()
        if wait:
            path = export_prediction(src, kind, out, object_type=object_type)
            self._exported(kind, path)
            return path
        job = BackgroundJob(
            lambda report, cancel: export_prediction(src, kind, out, object_type=object_type),
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
        """Ask where to write ``kind`` (GeoJSON: the file type picks annotations or detections), then write it."""
        src = self._result()
        label, file_filter = EXPORTS[kind]
        geojson = kind is ExportFormat.GEOJSON
        filters = ";;".join(GEOJSON_TYPES) if geojson else file_filter
        out, chosen = QFileDialog.getSaveFileName(self, f"Export {label}", str(default_output(src, kind)), filters)
        if out:
            self.export(kind, out, wait=False, object_type=GEOJSON_TYPES.get(chosen, ObjectType.ANNOTATION))
