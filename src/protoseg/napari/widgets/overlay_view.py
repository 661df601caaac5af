"""Overlay display section of the Predict widget: which overlay chunks are on screen (tells the scheduler),
the CAM class shown, overlay opacity and legend, redraws as chunks arrive, and removing the overlays."""

from __future__ import annotations

from typing import Any

from napari.layers import Labels

from protoseg.napari.widgets.overlay_layers import add_canvas_legend, hide_canvas_legend, make_read_only


class OverlayViewSection:
    """Mixin of :class:`~protoseg.napari.widgets.predict.PredictWidget` (a QWidget): shows its overlay layers.
    The widget provides the viewer, the overlay layers, the scheduler, the class choice and the status line."""

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
        for ly in self.overlays:
            if ly.visible and ly in self.viewer.layers:
                ly.refresh()
        if self.scheduler is not None and self.scheduler.last_error:
            self.status.error(f"overlay computation failed: {self.scheduler.last_error}")

    #: bumped whenever the overlays are cleared: layer-adding steps still queued from before then do nothing
    _overlay_generation = 0

    def _clear_overlays(self) -> None:
        self._overlay_generation += 1
        self._view_timer.stop()
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
