"""Overlay display section of the Predict widget: which overlay chunks are on screen (tells the scheduler),
the CAM class shown, overlay opacity and legend, redraws as chunks arrive, and removing the overlays."""

from __future__ import annotations

import time
from typing import Any

from napari.layers import Labels

from protoseg.napari.widgets._common import WidgetError
from protoseg.napari.widgets.overlay_layers import add_canvas_legend, hide_canvas_legend, make_read_only


class OverlayViewSection:
    """Mixin of :class:`~protoseg.napari.widgets.predict.PredictWidget` (a QWidget): shows its overlay layers.
    The widget provides the viewer, the overlay layers, the scheduler, the class choice and the status line."""

    def update_view(self) -> bool:
        """Tell the scheduler which overlay chunks are on screen (level and pixel window of a visible overlay
        layer, as napari chose them); work that left the view is dropped. True when the view changed."""
        if self.scheduler is None or self.scheduler.closed:
            return False
        if time.monotonic() - getattr(self, "_overview_at", 0.0) < 0.5:
            return False  # the overlays were just handed their data again: napari's level and corners settle
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
        self._describe_view()
        return True

    def _view_region(self) -> list[tuple[int, int, int]]:
        """Level-0 chunks under the view that are not computed yet, centre first."""
        key = self._view_key
        if self.scheduler is None or key is None or key[0] < 0:
            return []
        return self.scheduler.region_chunks(*key)

    def _describe_view(self) -> None:
        """What 'Predict this view' would cost: chunks, tiles and the time at the rate measured here."""
        sched = self.scheduler
        if sched is None or sched.region_running:
            return
        keys = self._view_region()
        self.view_btn.setEnabled(bool(keys))
        if not keys:
            self.view_info.setText("this view is computed" if self._view_key and self._view_key[0] >= 0 else "")
            return
        tiles = sched.region_tiles(keys)
        rate = sched.tiles_per_second
        when = (
            f"about {_duration(tiles / rate)} at {rate:.0f} tiles/s measured here"
            if rate
            else "time known after the first chunks"
        )
        self.view_info.setText(f"this view: {len(keys)} chunks, up to {tiles} model tiles; {when}")

    def predict_view(self) -> int:
        """Compute the visible area at the model's resolution in the background, centre first (cancellable);
        coarser levels fill in as chunks land. Returns the number of chunks queued."""
        if self.scheduler is None:
            raise WidgetError("press 'Show overlays' first")
        self.update_view()
        keys = self._view_region()
        if not keys:
            self.view_info.setText("this view is computed")
            return 0
        self._region_started = time.monotonic()
        queued = self.scheduler.predict_region(keys)
        self.view_btn.setEnabled(False)
        self.view_stop.setEnabled(True)
        self.view_info.setText(f"predicting this view: 0/{queued} chunks …")
        return queued

    def stop_view_prediction(self) -> None:
        """Stop 'Predict this view' after the current chunk (computed chunks stay)."""
        left = self.scheduler.cancel_region() if self.scheduler is not None else 0
        self.view_stop.setEnabled(False)
        self._describe_view()  # what the view still needs (the button is enabled again)
        self.view_info.setText(f"stopped; {left} chunks not computed. {self.view_info.text()}".strip())

    def _region_progress(self) -> None:
        """Progress of 'Predict this view' (called as chunks land)."""
        sched = self.scheduler
        if sched is None or not self.view_stop.isEnabled():
            return
        done, total = sched.region_done, sched.region_total
        if sched.region_running:
            rate, left = sched.tiles_per_second, sched.region_tiles(range(total - done))
            eta = f", about {_duration(left / rate)} left" if rate else ""
            self.view_info.setText(f"predicting this view: {done}/{total} chunks{eta}")
            return
        self.view_stop.setEnabled(False)
        took = time.monotonic() - getattr(self, "_region_started", time.monotonic())
        self.view_info.setText(f"this view is predicted: {done} chunks in {_duration(took)}")

    def set_overlay_opacity(self, value: int | float) -> None:
        """Opacity (0-100 %) of every overlay layer (the dock's slider)."""
        self.opacity.blockSignals(True)
        self.opacity.setValue(round(value))
        self.opacity.blockSignals(False)
        for ly in self.overlays:
            ly.opacity = float(value) / 100.0

    def _style_overlays(self) -> None:
        """Overlay opacity from the dock's slider, read-only mask layer, class legend on the canvas."""
        if any(ly.opacity != self.opacity.value() / 100.0 for ly in self.overlays):
            self.set_overlay_opacity(self.opacity.value())  # each change redraws the layer's thumbnail
        masks = [ly for ly in self.overlays if isinstance(ly, Labels)]
        for ly in masks:
            if ly.editable:
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
        # napari keeps the coarsest level of a 2-D multiscale layer as first read (its overview and layer
        # thumbnail); hand it the data again, at most once a second, so computed chunks show there too
        now = time.monotonic()
        stale = now - getattr(self, "_overview_at", 0.0) > 1.0
        if stale:
            self._overview_at = now
        for ly in self.overlays:
            if ly.visible and ly in self.viewer.layers:
                if stale and ly.multiscale:
                    ly.data = list(ly.data)
                else:
                    ly.refresh()
        self._region_progress()
        if stale:
            self._describe_view()  # what is left of the view, at the rate measured so far
        if self.scheduler is not None and self.scheduler.last_error:
            self.status.error(f"overlay computation failed: {self.scheduler.last_error}")

    #: bumped whenever the overlays are cleared: layer-adding steps still queued from before then do nothing
    _overlay_generation = 0

    def _clear_overlays(self) -> None:
        self._overlay_generation += 1
        self._view_timer.stop()
        self._view_key = None
        self.view_btn.setEnabled(False)
        self.view_stop.setEnabled(False)
        self.view_info.setText("")
        if self.scheduler is not None:
            self.scheduler.close()
            self.scheduler = None
        old, self.overlays = self.overlays, []
        hide_canvas_legend(self.viewer)
        for ly in old:
            if ly in self.viewer.layers:
                self.viewer.layers.remove(ly)

    def _on_layer_removed(self, event: Any) -> None:
        if event.value in self.overlays:
            self.overlays.remove(event.value)
            if not self.overlays:
                hide_canvas_legend(self.viewer)
                if self.scheduler is not None:
                    self.scheduler.close()


def _duration(seconds: float) -> str:
    """'40 s', '3 min', '1.5 h'."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 5400:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"
