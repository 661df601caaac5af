"""What the widgets know about a slide layer: the reader's metadata, its scan resolution (the file's or the
one the user gave, remembered per slide), layers other readers opened, and the prompt that asks for the mpp."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from qtpy.QtWidgets import QLabel, QPushButton, QVBoxLayout, QWidget

from protoseg.errors import ProtosegError
from protoseg.napari.widgets._common import WidgetError, mpp_changed, row

_USER_MPP: dict[str, float] = {}  # resolved slide path -> µm/px the user gave (slides that record none)


def slide_meta(layer: Any) -> dict[str, Any] | None:
    """The ``protoseg`` metadata the reader puts on slide image layers (path, mpp, ...), or None."""
    meta = getattr(layer, "metadata", None) or {}
    info = meta.get("protoseg") if isinstance(meta, dict) else None
    return info if isinstance(info, dict) and info.get("path") else None


def slide_layers(viewer: Any) -> list[Any]:
    """Image layers opened by the protoseg reader, in layer-list order."""
    return [ly for ly in viewer.layers if ly._type_string == "image" and slide_meta(ly) is not None]


def foreign_image_layers(viewer: Any) -> list[Any]:
    """Image layers the protoseg widgets cannot use: opened by another reader (no µm scale, not lazy) or made
    from arrays; layers with a source file come first."""
    other = [ly for ly in viewer.layers if ly._type_string == "image" and slide_meta(ly) is None]
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


def set_slide_mpp(layer: Any, mpp: float) -> None:
    """Remember the scan resolution of a slide without mpp metadata; every widget uses it (``mpp_changed``)."""
    info = slide_meta(layer)
    if info is None:
        raise WidgetError(f"{getattr(layer, 'name', layer)} is not a slide opened by protoseg")
    if not 0.01 <= float(mpp) <= 100:
        raise WidgetError(f"scan resolution {mpp} µm/px is out of range: use e.g. 0.25 (40x) or 0.5 (20x)")
    path = str(Path(info["path"]).resolve())
    _USER_MPP[path] = float(mpp)
    mpp_changed.emit(path)


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
        self.spin = QDoubleSpinBox(decimals=4, minimum=0.01, maximum=100.0, singleStep=0.05, value=0.5)
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

    def _on_layers(self, _event: Any = None) -> None:
        try:
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

    def apply(self) -> None:
        layer = self.layer_of()
        if layer is not None:
            set_slide_mpp(layer, float(self.spin.value()))
