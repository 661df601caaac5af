"""What the widgets know about a slide layer: the reader's metadata, its scan resolution (the file's or the
one the user gave, remembered per slide), layers other readers opened, and the prompt that asks for the mpp."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.layers import Image
from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from protoseg.config_ranges import MPP
from protoseg.errors import ProtosegError
from protoseg.napari.widgets._common import WidgetError, mpp_changed, row

logger = logging.getLogger(__name__)

UM = ("micrometer", "micrometer")  # how napari names the layer units of ("um", "um")
_USER_MPP: dict[str, float] = {}  # resolved slide path -> µm/px the user gave (slides that record none)


def slide_meta(layer: Any) -> dict[str, Any] | None:
    """The ``protoseg`` metadata the reader puts on slide image layers (path, mpp, ...), or None."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("protoseg") if isinstance(meta, dict) else None
    return info if isinstance(info, dict) and info.get("path") else None


def slide_layers(viewer: Any) -> list[Any]:
    """Image layers opened by the protoseg reader, in layer-list order."""
    return [ly for ly in viewer.layers if isinstance(ly, Image) and slide_meta(ly) is not None]


def foreign_image_layers(viewer: Any) -> list[Any]:
    """Image layers the protoseg widgets cannot use: opened by another reader (no µm scale, not lazy) or made
    from arrays; layers with a source file come first."""
    other = [ly for ly in viewer.layers if isinstance(ly, Image) and slide_meta(ly) is None]
    other = [ly for ly in other if not (getattr(ly, "metadata", None) or {}).get("protoseg_overlay")]
    return sorted(other, key=lambda ly: getattr(getattr(ly, "source", None), "path", None) is None)


def reopen_with_protoseg(viewer: Any, layer: Any) -> Any:
    """Replace an image layer opened by another reader with the protoseg slide layer of the same file."""
    path = getattr(getattr(layer, "source", None), "path", None)
    if not path:
        raise WidgetError(f"{layer.name} has no source file: open the slide file with File > Open (protoseg)")
    new = viewer.open(str(path), plugin="protoseg")[0]
    viewer.layers.remove(layer)
    return new


def slide_mpp(layer: Any) -> float | None:
    """Microns per pixel of a slide layer: the file's, else the one the user gave for that slide (remembered
    for the session, also when the slide is opened again), else None."""
    info = slide_meta(layer)
    if info is None:
        return None
    if info.get("mpp"):
        return float(info["mpp"])
    return _USER_MPP.get(str(Path(info["path"]).resolve()))


def set_slide_mpp(layer: Any, mpp: float, viewer: Any = None) -> None:
    """Remember the scan resolution of a slide without mpp metadata; every widget uses it (``mpp_changed``).
    The slide and the layers placed on it (in ``viewer``, else napari's current one) are shown in µm."""
    info = slide_meta(layer)
    if info is None:
        raise WidgetError(f"{getattr(layer, 'name', layer)} is not a slide opened by protoseg")
    if MPP.problem(float(mpp)) is not None:  # the one resolution rule (config_ranges.MPP)
        raise WidgetError(f"scan resolution {mpp} µm/px is out of range: use e.g. 0.25 (40x) or 0.5 (20x)")
    path = str(Path(info["path"]).resolve())
    _USER_MPP[path] = float(mpp)
    if not info.get("mpp"):  # a file mpp is the layer's scale already
        show_in_micrometres(layer, float(mpp), viewer if viewer is not None else _viewer_showing(layer))
    mpp_changed.emit(path)


def _viewer_showing(layer: Any) -> Any | None:
    """napari's current viewer when ``layer`` is one of its layers, else None."""
    import napari

    viewer = napari.current_viewer()
    return viewer if viewer is not None and any(ly == layer for ly in viewer.layers) else None


def show_in_micrometres(slide: Any, mpp: float, viewer: Any = None) -> list[Any]:
    """Give a slide layer the scale ``mpp`` and units µm, with the layers placed on it in its old frame
    (:func:`layers_on_slide`, when ``viewer`` is given); the camera keeps its view. Returns the layers changed."""
    old_scale = np.asarray(slide.scale, np.float64)[-2:]
    if np.allclose(old_scale, mpp) and _units(slide) == UM:
        return []
    factor = mpp / old_scale
    origin = np.asarray(slide.translate, np.float64)[-2:]
    changed = [slide, *(layers_on_slide(viewer, slide) if viewer is not None else [])]
    for ly in changed:
        _rescale(ly, factor, origin)
    if viewer is not None:
        centre = np.asarray(viewer.camera.center, np.float64)
        centre[-2:] = origin + (centre[-2:] - origin) * factor
        viewer.camera.center = tuple(centre)
        viewer.camera.zoom = viewer.camera.zoom / float(factor.mean())
    logger.info("%s shown at %.4g µm/px with %d layer(s) placed on it", slide.name, mpp, len(changed) - 1)
    return changed


def layers_on_slide(viewer: Any, slide: Any) -> list[Any]:
    """Layers drawn or predicted on ``slide`` in its frame: 2-D, the slide's units, not a slide themselves,
    their centre inside the slide or still empty (regions, prediction overlays)."""
    box = np.asarray(slide.extent.world, np.float64)[:, -2:]
    units = _units(slide)
    out = []
    for ly in viewer.layers:
        if slide_meta(ly) is not None or ly.ndim != 2 or _units(ly) != units:
            continue
        centre = np.asarray(ly.extent.world, np.float64)[:, -2:].mean(axis=0)
        if not np.all(np.isfinite(centre)) or (np.all(centre >= box[0]) and np.all(centre <= box[1])):
            out.append(ly)
    return out


def _units(layer: Any) -> tuple[str, ...]:
    return tuple(str(u) for u in layer.units)[-2:]


def _rescale(layer: Any, factor: np.ndarray, origin: np.ndarray) -> None:
    """Scale a 2-D layer's world placement by ``factor`` about ``origin`` and label it in µm."""
    scale = np.asarray(layer.scale, np.float64)
    translate = np.asarray(layer.translate, np.float64)
    scale[-2:] *= factor
    translate[-2:] = origin + (translate[-2:] - origin) * factor
    layer.scale, layer.translate = tuple(scale), tuple(translate)
    layer.units = ("um", "um")


def find_slide_layer(viewer: Any, path: str | Path) -> Any | None:
    """The slide layer showing the file ``path`` (compared after resolving), or None."""
    target = Path(path).resolve()
    for ly in slide_layers(viewer):
        if Path(slide_meta(ly)["path"]).resolve() == target:  # type: ignore[index]
            return ly
    return None


class MppPrompt(QWidget):
    """The one question asked of a slide without microns-per-pixel: its scan resolution. Shown (highlighted)
    only while the chosen slide has none; the answer is stored per slide (``set_slide_mpp``) so every widget
    and every later use of that slide gets it, and every prompt for that slide disappears."""

    def __init__(self, layer_of: Callable[[], Any], viewer: Any = None, parent: QWidget | None = None) -> None:
        from qtpy.QtWidgets import QDoubleSpinBox

        super().__init__(parent)
        self.layer_of, self.viewer = layer_of, viewer
        self.reopen = QPushButton("Reopen with protoseg")
        self.reopen.clicked.connect(self._reopen)
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.spin = QDoubleSpinBox(decimals=4, minimum=MPP.low, maximum=MPP.high, singleStep=0.05, value=0.5)
        self.spin.setSuffix(" µm/px")
        self.button = QPushButton("Set")
        self.button.clicked.connect(self.apply)
        self.ask = row(self.spin, self.button)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.label)
        box.addWidget(self.ask)
        box.addWidget(self.reopen)
        mpp_changed.connect(self._on_mpp_changed)
        if viewer is not None:
            for name in ("inserted", "removed"):
                getattr(viewer.layers.events, name).connect(self._on_layers)
        self.refresh()

    def text(self) -> str:
        return self.label.text()

    def _on_mpp_changed(self, _path: str) -> None:
        try:
            self.refresh()
        except RuntimeError:  # the widget was deleted by Qt: stop listening
            mpp_changed.disconnect(self._on_mpp_changed)

    def _on_layers(self, event: Any = None) -> None:
        try:
            if getattr(event, "type", "") == "inserted":
                self._rescale_reopened(getattr(event, "value", None))
            self.refresh()
        except RuntimeError:  # the widget was deleted by Qt: stop listening
            for name in ("inserted", "removed"):
                getattr(self.viewer.layers.events, name).disconnect(self._on_layers)

    def _reopen(self) -> None:
        foreign = foreign_image_layers(self.viewer) if self.viewer is not None else []
        if foreign:
            try:
                reopen_with_protoseg(self.viewer, foreign[0])
            except (ProtosegError, ValueError, OSError) as exc:
                self.label.setText(str(exc))

    def refresh(self) -> None:
        layer = self.layer_of()
        info = slide_meta(layer) if layer is not None else None
        mpp = slide_mpp(layer) if info is not None else None
        self.ask.setVisible(info is not None and mpp is None)
        foreign = foreign_image_layers(self.viewer) if self.viewer is not None and info is None else []
        self.reopen.setVisible(bool(foreign) and getattr(foreign[0].source, "path", None) is not None)
        if info is None and foreign:
            self.label.setStyleSheet("color: #f0a030; font-weight: bold")
            self.label.setText(
                f"'{foreign[0].name}' was not opened by protoseg (no µm scale, not lazy), so this widget cannot "
                "use it: reopen it with protoseg (File > Open, reader 'protoseg')"
            )
        elif info is None:
            self.label.setStyleSheet("")
            self.label.setText("open a slide (File > Open) to use it here")
        elif mpp is None:
            self.label.setStyleSheet("color: #f0a030; font-weight: bold")
            self.label.setText(
                f"{layer.name} records no microns-per-pixel: set its scan resolution "
                "(0.25 µm/px for 40x, 0.5 for 20x); it is used for this slide everywhere"
            )
        else:
            self.label.setStyleSheet("")
            given = "" if info.get("mpp") else " (set by you)"
            self.label.setText(f"slide resolution {mpp:.4g} µm/px{given}")

    def _rescale_reopened(self, layer: Any) -> None:
        """A slide opened again after the user gave its mpp is shown in µm at once."""
        info = slide_meta(layer) if layer is not None else None
        mpp = slide_mpp(layer) if info is not None and not info.get("mpp") else None
        if mpp and show_in_micrometres(layer, mpp) and len(self.viewer.layers) == 1:
            self.viewer.reset_view()  # napari framed the first layer at its old scale

    def apply(self) -> None:
        layer = self.layer_of()
        if layer is not None:
            set_slide_mpp(layer, float(self.spin.value()), self.viewer)
