"""Correct-and-retrain box of the Predict dock: paint corrections over the view at the model's resolution
(saved as the user paints into a ``protoseg.corrections`` store), retrain from them in a child process,
undo a retrain, QuPath GeoJSON in and out, an uncertainty overlay and the next region to review.

Thin: the store, the GeoJSON, the fine-tuning and the uncertainty maths live in the library; this box maps
the view onto the model's grid and keeps the corrections layer in step with the store.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QCheckBox, QFileDialog, QGroupBox, QLabel, QPushButton, QSpinBox, QVBoxLayout, QWidget

from protoseg.napari.widgets._common import StatusLabel, WidgetError, row
from protoseg.napari.widgets.jobs import NapariProgress, ProcessJob
from protoseg.train.retrain_settings import RetrainSettings

if TYPE_CHECKING:
    from protoseg.napari.widgets.predict import PredictWidget

logger = logging.getLogger(__name__)

#: largest side (model-resolution pixels) of the area one corrections layer covers: it lives in memory
MAX_WINDOW = 4096
#: the child-process job of 'Retrain from corrections'
RETRAIN_JOB = "protoseg.train.retrain:retrain_job"


class CorrectBox(QGroupBox):
    """'Correct and retrain' controls; ``dock`` is the Predict dock (viewer, slide, overlays, checkpoint)."""

    def __init__(self, dock: PredictWidget, parent: QWidget | None = None) -> None:
        super().__init__("Correct and retrain", parent)
        self.dock = dock
        self.correct_btn = QPushButton("Correct")
        self.correct_btn.setCheckable(True)
        self.correct_btn.setToolTip(
            "paint the right class over the overlay with napari's brush, fill or polygon tools (eraser: no "
            "correction); saved as you paint"
        )
        self.retrain_btn, self.cancel_btn = QPushButton("Retrain from corrections"), QPushButton("Cancel")
        self.undo_btn = QPushButton("Undo retrain")
        self.epochs = QSpinBox(minimum=1, maximum=100, value=3)
        self.epochs.setPrefix("epochs ")
        self.epochs.setToolTip("fine-tuning epochs over the corrected patches (and as many replay patches)")
        self.trust = QCheckBox("Reviewed regions I left unpainted are right")
        self.trust.setChecked(RetrainSettings().trust_reviewed)
        self.trust.setToolTip(
            "retrain also learns the model's own prediction in regions marked reviewed ('Next region to review' "
            "marks the region it shows) wherever you did not paint; untick if you skip regions without looking"
        )
        self.export_btn, self.import_btn = QPushButton("Export GeoJSON"), QPushButton("Import GeoJSON")
        self.uncertain_btn, self.next_btn = QPushButton("Show uncertainty"), QPushButton("Next region to review")
        self.counter = QLabel("")
        self.counter.setWordWrap(True)
        self.status = StatusLabel()
        self.cancel_btn.setEnabled(False)
        self.undo_btn.setEnabled(False)
        layout = QVBoxLayout(self)
        layout.addWidget(row(self.correct_btn, self.uncertain_btn))  # two short buttons a row: the dock is narrow
        layout.addWidget(self.next_btn)
        layout.addWidget(self.counter)
        layout.addWidget(self.retrain_btn)
        layout.addWidget(row(self.epochs, self.cancel_btn, self.undo_btn))
        layout.addWidget(self.trust)
        layout.addWidget(row(self.export_btn, self.import_btn))
        layout.addWidget(self.status)
        self.store: Any = None
        self.layer: Any = None
        self.uncertainty_layer: Any = None
        self.window: tuple[int, int, int, int] | None = None  # (y0, y1, x0, x1) of the grid in the layer
        self._saved: np.ndarray | None = None  # the layer's pixels as last written to the store
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="protoseg-corrections")
        self._save_timer = QTimer(self, singleShot=True, interval=200)
        self._save_timer.timeout.connect(self.save)
        self._poll = QTimer(self, interval=2000)  # undo/redo change the layer without a paint event
        self._poll.timeout.connect(self.save)
        self.job: ProcessJob | None = None
        self.parents: list[str] = []  # checkpoints before each retrain (Undo goes back)
        self.progress = NapariProgress()
        g = self.status.guard
        self.correct_btn.toggled.connect(lambda on: g(lambda: self.set_correcting(on)))
        self.retrain_btn.clicked.connect(lambda: g(self.retrain))
        self.cancel_btn.clicked.connect(self.cancel)
        self.undo_btn.clicked.connect(lambda: g(self.undo_retrain))
        self.export_btn.clicked.connect(lambda: g(self._export_dialog))
        self.import_btn.clicked.connect(lambda: g(self._import_dialog))
        self.uncertain_btn.clicked.connect(lambda: g(self.show_uncertainty))
        self.next_btn.clicked.connect(lambda: g(self.next_region))

    # ---- the store -----------------------------------------------------------------------------
    def _grid(self) -> Any:
        """The overlays' lazy prediction (its level 0 is the model-resolution grid corrections live on)."""
        sched = self.dock.scheduler
        if sched is None:
            raise WidgetError("press 'Show overlays' first: corrections are painted over the model's overlay")
        return sched.lazy

    def store_path(self) -> Path:
        """Where this slide's corrections live: ``corrections/`` in the checkpoint's run folder."""
        from protoseg.corrections.store import default_corrections_path

        _, slide, _ = self.dock._slide_inputs()
        ckpt = Path(self.dock.checkpoint.text()).resolve()
        run = ckpt.parent.parent if ckpt.parent.name in ("stage1", "stage2") else ckpt.parent
        return default_corrections_path(run / "corrections", slide)

    def open_store(self) -> Any:
        """This slide's corrections store (created on first use; reopened with the slide)."""
        from protoseg.corrections.store import open_or_create_corrections

        lazy = self._grid()
        w, h = lazy.levels[0]
        _, slide, _ = self.dock._slide_inputs()
        path = self.store_path()
        if self.store is None or Path(self.store.path) != path:
            self.store = open_or_create_corrections(
                path,
                slide=str(slide),
                shape=(h, w),
                mpp=lazy.mpp,
                scale=lazy.layout.geom.scale,
                classes=lazy.predictor.classes,
            )
        self._count()
        return self.store

    # ---- correcting ------------------------------------------------------------------------------
    def view_window(self) -> tuple[int, int, int, int]:
        """The grid pixels (y0, y1, x0, x1) under the view (as the overlay scheduler sees it), at most
        MAX_WINDOW a side."""
        lazy = self._grid()
        self.dock.update_view()
        key = self.dock._view_key  # (level, y0, y1, x0, x1) of the visible overlay, set by update_view
        if key is None or key[0] < 0:
            raise WidgetError("no overlay is visible: show the class-mask overlay to correct it")
        level, y0, y1, x0, x1 = key
        w, h = lazy.levels[0]
        f = 2**level
        y0, y1, x0, x1 = max(0, y0 * f), min(h, y1 * f), max(0, x0 * f), min(w, x1 * f)
        if y1 - y0 > MAX_WINDOW or x1 - x0 > MAX_WINDOW:
            raise WidgetError(
                f"the view spans {x1 - x0} x {y1 - y0} px at the model's resolution; zoom in to at most "
                f"{MAX_WINDOW} px a side to correct"
            )
        return y0, y1, x0, x1

    def set_correcting(self, on: bool) -> Any:
        """Enter (a corrections layer over the view, the store's pixels in it) or leave Correct mode."""
        if not on:
            self.flush()  # every stroke on disk before the layer goes
            self._poll.stop()
            if self.layer is not None and self.layer in self.dock.viewer.layers:
                self.dock.viewer.layers.remove(self.layer)
            self.layer, self.window, self._saved = None, None, None
            self.status.ok(f"corrections saved in {self.store.path}" if self.store is not None else "")
            return None
        try:
            return self._start_correcting()
        except Exception:
            self.correct_btn.blockSignals(True)
            self.correct_btn.setChecked(False)
            self.correct_btn.blockSignals(False)
            raise

    def _placement(self, y0: int, x0: int) -> tuple[Any, tuple[float, float]]:
        """World placement of the model grid on the slide layer, and the translate of a window at (y0, x0)."""
        from protoseg.napari.overlays import Placement
        from protoseg.napari.widgets.overlay_layers import layer_units

        slide_layer, _, _ = self.dock._slide_inputs()
        factor = self._grid().layout.geom.scale
        place = Placement.on_slide(slide_layer.scale, slide_layer.translate, factor, layer_units(slide_layer))
        translate = np.asarray(place.translate) + np.asarray(place.scale) * np.array([y0, x0])
        return place, (float(translate[0]), float(translate[1]))

    def _start_correcting(self) -> Any:
        from napari.layers import Labels

        from protoseg.napari.overlays import mask_colormap

        store = self.open_store()
        self._writer.submit(lambda: None).result()  # earlier writes land before the window is read
        y0, y1, x0, x1 = self.window = self.view_window()
        pixels = np.array(store.read(y0, y1, x0, x1), dtype=np.uint8)
        self._saved = pixels.copy()
        lazy = self._grid()
        place, translate = self._placement(y0, x0)
        layer = Labels(
            pixels,
            name="corrections (protoseg)",
            scale=place.scale,
            translate=translate,
            colormap=mask_colormap(lazy.predictor.classes),
            opacity=0.8,
            metadata={"protoseg_overlay": {"kind": "corrections", "store": str(store.path)}},
            **({"units": place.units} if place.units else {}),
        )
        self.layer = self.dock.viewer.add_layer(layer)
        self.layer.mode = "paint"
        self.layer.selected_label = 1 + max(0, self.dock.class_combo.currentIndex())
        self.layer.events.paint.connect(lambda _e=None: self._save_timer.start())
        self._poll.start()
        names = ", ".join(f"{i + 1} {n}" for i, n in enumerate(lazy.predictor.classes.names))
        self.status.ok(f"paint the right class (label {names}); erase = no correction; saved as you paint")
        return self.layer

    def save(self) -> int:
        """Write what changed in the corrections layer to the store (in the background); returns the pixels."""
        if self.layer is None or self._saved is None or self.window is None:
            return 0
        now = np.asarray(self.layer.data)
        changed = now != self._saved
        if not changed.any():
            return 0
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        block = now[r0:r1, c0:c1].copy()
        self._saved[r0:r1, c0:c1] = block
        y0, _, x0, _ = self.window
        store = self.store
        self._writer.submit(store.write, y0 + r0, x0 + c0, block).add_done_callback(_log_failure)
        QTimer.singleShot(300, self._count)
        return int(changed.sum())

    def _count(self) -> None:
        if self.store is None:
            return
        counts = {n: c for n, c in self.store.counts().items() if c}
        reviewed, total = self.store.reviewed_count(), int(np.prod(self.store.reviewed.shape))
        text = ", ".join(f"{n} {c}" for n, c in counts.items()) or "none yet"
        self.counter.setText(f"reviewed {reviewed}/{total} regions; corrected px: {text}")

    def flush(self) -> None:
        """Wait until every write reached the store (before retraining or exporting)."""
        self.save()
        self._writer.submit(lambda: None).result()

    # ---- retraining ------------------------------------------------------------------------------
    def retrain(self) -> ProcessJob:
        """Fine-tune the checkpoint in use on the corrections, in a child process; the overlay then switches
        to the new checkpoint (the parent is kept: 'Undo retrain')."""

        if self.job is not None and self.job.running:
            raise WidgetError("a retrain is already running; cancel it first")
        store = self.open_store()
        self.flush()
        if store.is_empty():
            raise WidgetError("no corrections yet: press 'Correct this view' and paint the right classes")
        parent = Path(self.dock.checkpoint.text()).resolve()
        out = self.store_path().parent.parent / f"retrain-{len(self.parents) + 1}-{store.digest()[:8]}"
        kwargs = {
            "parent": str(parent),
            "corrections": self.all_corrections(),
            "out_dir": str(out),
            "settings": RetrainSettings(
                epochs=self.epochs.value(), trust_reviewed=self.trust.isChecked(), device=self.dock.device.currentText()
            ),
            "resume": (out / "last.pt").exists(),
        }
        self.job = ProcessJob(RETRAIN_JOB, kwargs, self._on_events, self._on_done, self._on_error, parent=self)
        self.retrain_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.status.ok("retraining: starting …")
        self._parent_pending = str(parent)
        return self.job.start()

    def all_corrections(self) -> list[str]:
        """Every corrections store of this run with corrections or reviewed regions (all slides corrected with it):
        one model learns them, and replays from all of them."""
        from protoseg.corrections.store import CORRECTIONS_SUFFIX, is_corrections_store, open_corrections

        folder = self.store_path().parent
        found = [p for p in sorted(folder.glob(f"*{CORRECTIONS_SUFFIX}")) if is_corrections_store(p)]
        stores = [open_corrections(p, mode="r") for p in found]
        return [str(s.path) for s in stores if not s.is_empty() or s.reviewed_count()]

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.ok("cancelling… (the parent checkpoint stays in use)")

    def _on_events(self, events: list[Any]) -> None:
        last = events[-1]
        total = max(1, int(getattr(last, "total_steps", 0) or 0))
        self.progress.update(int(getattr(last, "step", 0)), total, "protoseg retrain")
        loss = getattr(last, "losses", {}).get("loss")
        text = f"retraining: step {getattr(last, 'step', 0)}/{total}"
        self.status.ok(text + (f", loss {loss:.4f}" if loss is not None else ""))

    def _finished(self) -> None:
        self.progress.close()
        self.retrain_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, result: Any) -> None:
        from protoseg.napari.widgets._common import remember_checkpoint

        self._finished()
        path, facts = result
        remember_checkpoint(path, facts)
        self.parents.append(self._parent_pending)
        self.undo_btn.setEnabled(True)
        self._use_checkpoint(path)
        self.status.ok(f"retrained: {path} (parent kept: {self._parent_pending}); the overlay uses it now")

    def _on_error(self, exc: BaseException) -> None:
        self._finished()
        self.status.error(f"retrain stopped: {exc}")

    def undo_retrain(self) -> str:
        """Go back to the checkpoint before the last retrain (the retrained one stays on disk)."""
        if not self.parents:
            raise WidgetError("nothing to undo: no retrain in this session")
        parent = self.parents.pop()
        self._use_checkpoint(parent)
        self.undo_btn.setEnabled(bool(self.parents))
        self.status.ok(f"back to {parent}")
        return parent

    def _use_checkpoint(self, path: str | Path) -> None:
        """Switch the overlays to ``path``: a new lazy prediction, so no chunk of the old model is reused."""
        correcting = self.correct_btn.isChecked()
        if correcting:
            self.correct_btn.setChecked(False)
        self.dock.set_checkpoint(path)
        self.dock.status.guard(lambda: self.dock.show_overlays(background=True))

    # ---- GeoJSON ---------------------------------------------------------------------------------
    def export_geojson(self, out: str | Path) -> Path:
        """The corrections as QuPath annotation objects (with ``classification``)."""
        from protoseg.corrections.geojson import corrections_to_geojson

        store = self.open_store()
        self.flush()
        path = corrections_to_geojson(store, Path(out))
        self.status.ok(f"wrote {path}")
        return path

    def import_geojson(self, path: str | Path) -> int:
        """Corrections drawn elsewhere (QuPath annotations classified with this model's classes)."""
        from protoseg.corrections.geojson import corrections_from_geojson

        store = self.open_store()
        self.flush()
        n = corrections_from_geojson(Path(path), store)
        if self.layer is not None and self.window is not None:
            y0, y1, x0, x1 = self.window
            fresh = np.array(store.read(y0, y1, x0, x1), dtype=np.uint8)
            self.layer.data = fresh
            self._saved = fresh.copy()
        self._count()
        self.status.ok(f"imported {n} corrected pixels from {path}")
        return n

    def _export_dialog(self) -> None:
        out, _ = QFileDialog.getSaveFileName(
            self, "Export corrections", str(self.store_path().with_suffix(".geojson")), "GeoJSON (*.geojson)"
        )
        if out:
            self.export_geojson(out)

    def _import_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Import corrections", "", "GeoJSON (*.geojson *.json)")
        if path:
            self.import_geojson(path)

    # ---- where to look next -------------------------------------------------------------------------
    def _uncertainty_blocks(self, block: int) -> np.ndarray:
        """Review score (``review_scores``: top-2 margin uncertainty over the whole block) per ``block``-px block
        of the grid (the store's review grid) over the computed level-0 chunks; NaN where nothing is computed."""
        from protoseg.infer.uncertainty import margin_uncertainty, review_scores

        lazy = self._grid()
        w, h = lazy.levels[0]
        sums, counts = np.zeros((-(-h // block), -(-w // block))), np.zeros((-(-h // block), -(-w // block)))
        grid = lazy.layout.chunk_grid(0)
        for cy in range(grid.shape[0]):
            for cx in range(grid.shape[1]):
                chunk = lazy.cached_chunk(0, cy, cx)
                if chunk is None:
                    continue
                bx, by, bw, bh = grid.box(cy, cx)
                u = margin_uncertainty(chunk.probs)
                for r in range(by // block, -(-(by + bh) // block)):  # the review blocks this chunk overlaps
                    for c in range(bx // block, -(-(bx + bw) // block)):
                        part = u[
                            max(0, r * block - by) : (r + 1) * block - by, max(0, c * block - bx) : (c + 1) * block - bx
                        ]
                        sums[r, c] += float(part.sum(dtype=np.int64))
                        counts[r, c] += part.size
        return review_scores(sums, counts, block)

    def _shown_block(self, store: Any, r: int, c: int) -> np.ndarray:
        """The class map the overlay shows in review block (r, c) (computed level-0 chunks; 255 where nothing is
        computed yet), kept by the store as what the user accepted there."""
        y0, y1, x0, x1 = store.block_box(r, c)
        out = np.full((y1 - y0, x1 - x0), 255, np.uint8)
        lazy = self._grid()
        grid = lazy.layout.chunk_grid(0)
        c0 = lazy.layout.chunk
        for cy in range(y0 // c0, -(-y1 // c0)):
            for cx in range(x0 // c0, -(-x1 // c0)):
                if cy >= grid.shape[0] or cx >= grid.shape[1]:
                    continue
                chunk = lazy.cached_chunk(0, cy, cx)
                if chunk is None:
                    continue
                bx, by, bw, bh = grid.box(cy, cx)
                ay0, ay1, ax0, ax1 = max(y0, by), min(y1, by + bh), max(x0, bx), min(x1, bx + bw)
                if ay0 < ay1 and ax0 < ax1:
                    out[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0] = chunk.mask[ay0 - by : ay1 - by, ax0 - bx : ax1 - bx]
        return out

    def show_uncertainty(self) -> Any:
        """An overlay of the model's uncertainty (top-2 class margin) over what is computed so far."""
        from napari.layers import Image

        from protoseg.infer.uncertainty import margin_uncertainty

        lazy = self._grid()
        y0, y1, x0, x1 = self.view_window()
        got = lazy.window(x0, y0, x1, y1)  # the view's tiles: cached by the overlay, computed otherwise
        u = margin_uncertainty(got.probs)
        place, translate = self._placement(y0, x0)
        if self.uncertainty_layer is not None and self.uncertainty_layer in self.dock.viewer.layers:
            self.dock.viewer.layers.remove(self.uncertainty_layer)
        self.uncertainty_layer = self.dock.viewer.add_layer(
            Image(
                u,
                name="uncertainty (protoseg)",
                scale=place.scale,
                translate=translate,
                colormap="magma",
                contrast_limits=(0, 255),
                opacity=0.6,
                metadata={"protoseg_overlay": {"kind": "uncertainty"}},
                **({"units": place.units} if place.units else {}),
            )
        )
        self.status.ok("uncertainty: bright = the two most likely classes are close (top-2 margin)")
        return self.uncertainty_layer

    def next_region(self) -> tuple[int, int] | None:
        """Centre the view on the most uncertain region not reviewed yet (over what is computed) and mark it
        reviewed; None when every computed region has been reviewed."""
        from protoseg.infer.uncertainty import next_review_block

        store = self.open_store()
        blocks = self._uncertainty_blocks(store.chunk)
        reviewed = np.asarray(store.reviewed[:], dtype=np.uint8)
        found = next_review_block(blocks, reviewed)
        if found is None:
            self.status.ok("every computed region is reviewed; 'Predict this view' computes more")
            return None
        r, c = found
        store.mark_reviewed(r, c, shown=self._shown_block(store, r, c))
        lazy = self._grid()
        slide_layer, _, _ = self.dock._slide_inputs()
        s = lazy.layout.geom.scale
        centre = np.array([(r + 0.5) * store.chunk * s, (c + 0.5) * store.chunk * s])  # level-0 slide px
        world = centre * np.asarray(slide_layer.scale)[-2:] + np.asarray(slide_layer.translate)[-2:]
        self.dock.viewer.camera.center = tuple(world)
        self._count()
        self.status.ok(f"region {r + 1},{c + 1}: uncertainty {blocks[r, c]:.0f}/255; marked reviewed")
        return found

    def close(self) -> None:
        """Save and stop (the dock is closing)."""
        self.flush()
        if self.job is not None and self.job.running:
            self.job.kill()
        self._writer.shutdown(wait=True)


def _log_failure(future: Any) -> None:
    exc = future.exception()
    if exc is not None:
        logger.error("saving corrections failed: %s", exc)
