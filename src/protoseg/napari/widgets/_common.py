"""Shared widget plumbing: cross-widget signals and a region-source registry, coordinate conversion between
layers, the choices several widgets offer (devices, data sources, classes) and small Qt helpers (rows, paths,
status line, layer choice)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QEvent, QObject, Qt
from qtpy.QtWidgets import (
    QComboBox,
    QDockWidget,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QMainWindow,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from protoseg.classes import BCSS_WSSS, FALLBACK_COLORS, LUAD_HISTOSEG, ClassSpec
from protoseg.errors import ProtosegError
from protoseg.train.outcome import CheckpointFacts

if TYPE_CHECKING:
    from protoseg.data.regions import RegionSource

logger = logging.getLogger(__name__)


class WidgetError(ProtosegError):
    """A widget cannot do what was asked with the current inputs; the message says what to set."""


# ---- choices shared by several widgets ---------------------------------------------------------
#: Device choices of the Train and Predict widgets (auto: CUDA, then MPS, then CPU).
DEVICES = ("auto", "cpu", "cuda", "mps")
#: Data sources of the Train and Image bank widgets: a patch-dataset folder or the tagged regions.
FOLDER, REGIONS = "Dataset folder", "Tagged regions"


# ---- cross-widget signals and registry ---------------------------------------------------------
class _Hub:
    """Holder of module-level psygnal signals (``Signal`` is a descriptor, so it needs a class)."""

    checkpoint_ready = Signal(str)  # a trained checkpoint path, offered to the Predict widget
    regions_changed = Signal(str)  # name of a region source registered for training / bank building
    mpp_changed = Signal(str)  # path of a slide whose scan resolution the user set


hub = _Hub()
checkpoint_ready = hub.checkpoint_ready
regions_changed = hub.regions_changed
mpp_changed = hub.mpp_changed
_REGION_SOURCES: dict[str, RegionSource] = {}


def register_regions(source: RegionSource) -> None:
    """Make tagged regions available to the Train and Image bank widgets (replaces a same-named one)."""
    _REGION_SOURCES[source.name] = source
    regions_changed.emit(source.name)


def region_sources() -> dict[str, RegionSource]:
    """Registered region sources by name (a copy)."""
    return dict(_REGION_SOURCES)


_TRAINING_PATCH: list[int] = []


def set_training_patch(size: int) -> None:
    """The patch size (px) the Train dock will train at; other docks count patches at it."""
    _TRAINING_PATCH[:] = [int(size)]


def training_patch() -> int:
    """The Train dock's patch size, else the configuration default."""
    if _TRAINING_PATCH:
        return _TRAINING_PATCH[0]
    from protoseg.config import ProtosegConfig

    return ProtosegConfig().data.patch_size


def describe_tiling(tiling: Any, name: str, limit: int = 3) -> str:
    """What training on tagged regions gets: patches per class at the patch size and resolution, and the
    regions too small to give one (named)."""
    per_class = ", ".join(f"{n} {c}" for n, c in tiling.per_class.items())
    text = (
        f"'{name}': {len(tiling.patches)} patches of {tiling.patch_size} px at {tiling.mpp:g} µm/px, stride "
        f"{tiling.stride} px ({per_class})"
    )
    if tiling.too_small:
        patch_um = tiling.patch_size * tiling.mpp
        named = "; ".join(r.describe(patch_um) for r in tiling.too_small[:limit])
        more = f" (and {len(tiling.too_small) - limit} more)" if len(tiling.too_small) > limit else ""
        text += f". {len(tiling.too_small)} region(s) too small for one patch: {named}{more}"
    return text


# ---- coordinates ------------------------------------------------------------------------------
def _yx(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)[-2:]


def layer_to_level0(verts: np.ndarray, layer: Any, slide: Any) -> np.ndarray:
    """(N, 2) (row, col) data coordinates of ``layer`` -> level-0 pixel (row, col) of ``slide``
    (via world coordinates: scale and translate of both layers)."""
    world = np.asarray(verts, dtype=np.float64)[:, -2:] * _yx(layer.scale) + _yx(layer.translate)
    return (world - _yx(slide.translate)) / _yx(slide.scale)


def level0_to_layer(pixels: np.ndarray, layer: Any, slide: Any) -> np.ndarray:
    """Inverse of :func:`layer_to_level0`."""
    world = np.asarray(pixels, dtype=np.float64)[:, -2:] * _yx(slide.scale) + _yx(slide.translate)
    return (world - _yx(layer.translate)) / _yx(layer.scale)


def box_world_center(box: tuple[int, int, int, int], slide: Any) -> tuple[float, float]:
    """World (row, col) of the centre of a level-0 (x, y, w, h) box on ``slide``."""
    x, y, w, h = box
    c = np.array([y + h / 2, x + w / 2]) * _yx(slide.scale) + _yx(slide.translate)
    return float(c[0]), float(c[1])


# ---- classes ---------------------------------------------------------------------------------
#: colours for typed class names no dataset knows: the library palette, then two more
_PALETTE = (*FALLBACK_COLORS, (255, 255, 0), (128, 0, 128))


def classes_from_text(text: str) -> ClassSpec:
    """ClassSpec from typed names ("TUM, STR; LYM"); BCSS/LUAD names keep their dataset colours."""
    names = tuple(dict.fromkeys(n.strip() for n in text.replace(";", ",").split(",") if n.strip()))
    if not names:
        raise WidgetError("type at least one class name, e.g. 'TUM, STR, LYM, NEC'")
    known = [dict(zip(s.names, s.colors)) for s in (BCSS_WSSS, LUAD_HISTOSEG)]
    known.sort(key=lambda d: -sum(n in d for n in names))  # the dataset that names most of them first
    colours: list[tuple[int, int, int]] = []
    for n in names:
        c = next((d[n] for d in known if n in d and d[n] not in colours), None)
        colours.append(c or next(p for p in _PALETTE if p not in colours))
    return ClassSpec(names, tuple(colours))


_FACTS: dict[tuple[str, int], CheckpointFacts] = {}


def _stamp(path: str | Path) -> tuple[str, int]:
    resolved = Path(path).resolve()
    return str(resolved), resolved.stat().st_mtime_ns


def remember_checkpoint(path: str | Path, facts: CheckpointFacts) -> None:
    """Record what a training job reported of the checkpoint it wrote (same file, same modification time)."""
    _FACTS[_stamp(path)] = facts


def checkpoint_facts(path: str | Path) -> CheckpointFacts:
    """Classes and mpp of a checkpoint: as its training job reported them, else loaded from the file (torch)."""
    key = _stamp(path)
    if key not in _FACTS:
        from protoseg.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path)
        _FACTS[key] = CheckpointFacts(ckpt.classes, ckpt.mpp)
    return _FACTS[key]


def classes_from_checkpoint(path: str | Path) -> ClassSpec:
    """Classes stored in a protoseg checkpoint."""
    return checkpoint_facts(path).classes


def classes_from_dataset(folder: str | Path) -> ClassSpec:
    """Classes of a patch-dataset folder (layout auto-detected)."""
    from protoseg.data.datasets import open_dataset

    return open_dataset(folder).classes


def rgb_to_hex(rgb: tuple[int, int, int]) -> str:
    return "#{:02x}{:02x}{:02x}".format(*(int(v) for v in rgb))


# ---- small widgets -------------------------------------------------------------------------------
def row(*widgets: QWidget) -> QWidget:
    """The widgets side by side in one borderless row."""
    box = QWidget()
    layout = QHBoxLayout(box)
    layout.setContentsMargins(0, 0, 0, 0)
    for w in widgets:
        layout.addWidget(w)
    return box


#: The tallest a dock may need: it must fit a 1366x768 laptop screen under napari's menus and title bars.
MAX_DOCK_MIN_HEIGHT = 480


def scroll_layout(widget: QWidget) -> QVBoxLayout:
    """Give ``widget`` a vertical scroll area and return the layout of its contents, so the dock fits a laptop
    screen: a short window scrolls instead of pushing Start, progress and Export off-screen."""
    from qtpy.QtWidgets import QFrame, QScrollArea

    area = QScrollArea()
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)  # contents follow the dock's width
    inner = QWidget()
    area.setWidget(inner)
    outer = QVBoxLayout(widget)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(area)
    widget.setMinimumHeight(0)
    return QVBoxLayout(inner)


class _TabifyOnShow(QObject):
    """Event filter: the first time a protoseg dock is shown docked, tabify it with protoseg's other docks."""

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        if event.type() == QEvent.Type.Show and tabify_with_protoseg_docks(obj):
            obj.removeEventFilter(self)
        return False


def _dock_of(widget: QWidget) -> QDockWidget | None:
    parent = widget.parentWidget()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parentWidget()
    return parent


def tabify_with_protoseg_docks(widget: QWidget) -> bool:
    """Put ``widget``'s dock in one tab group with the other protoseg docks of its window (each gets the full
    height, not a slit) and bring it to the front. Qt API only. True once the widget is docked."""
    dock = _dock_of(widget)
    main = dock.parentWidget() if dock is not None else None
    if dock is None or not isinstance(main, QMainWindow):
        return False
    others = [
        d
        for d in main.findChildren(QDockWidget)
        if d is not dock and not d.isHidden() and getattr(d.widget(), "protoseg_dock", False)
    ]
    if others and dock not in main.tabifiedDockWidgets(others[0]):
        main.tabifyDockWidget(others[0], dock)
    dock.raise_()
    return True


def tabify_when_docked(widget: QWidget) -> None:
    """Mark ``widget`` as a protoseg dock and tabify it with the others when napari docks it."""
    widget.protoseg_dock = True  # our own widget's attribute: how sibling docks recognise each other
    widget._tabify_filter = _TabifyOnShow(widget)
    widget.installEventFilter(widget._tabify_filter)


class PathEdit(QWidget):
    """A path field with a browse button; ``mode`` is "dir", "open" or "save"."""

    def __init__(self, mode: str = "dir", placeholder: str = "", file_filter: str = "", parent: QWidget | None = None):
        super().__init__(parent)
        self.mode, self.file_filter = mode, file_filter
        self.edit = QLineEdit()
        self.edit.setPlaceholderText(placeholder)
        browse = QPushButton("…")
        browse.setFixedWidth(28)
        browse.clicked.connect(self.browse)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.edit)
        row.addWidget(browse)

    def text(self) -> str:
        return self.edit.text().strip()

    def setText(self, text: str) -> None:
        self.edit.setText(str(text))

    def browse(self) -> str:
        """Open a file dialog; the chosen path replaces the text (unchanged when cancelled)."""
        if self.mode == "dir":
            path = QFileDialog.getExistingDirectory(self, "Choose a folder", self.text())
        elif self.mode == "save":
            path, _ = QFileDialog.getSaveFileName(self, "Save as", self.text(), self.file_filter)
        else:
            path, _ = QFileDialog.getOpenFileName(self, "Open", self.text(), self.file_filter)
        if path:
            self.setText(path)
        return path


class StatusLabel(QLabel):
    """Word-wrapped status line; ``guard(fn)`` runs ``fn`` and shows a protoseg/IO error in red instead of raising."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWordWrap(True)

    def ok(self, text: str) -> None:
        self.setStyleSheet("")
        self.setText(text)

    def error(self, text: str) -> None:
        self.setStyleSheet("color: #e06c6c")
        self.setText(text)

    def guard(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except (ProtosegError, ValueError, OSError) as exc:
            logger.warning("%s", exc)
            self.error(str(exc))
            return None


class LayerCombo(QComboBox):
    """Combo box of the viewer's layers accepted by ``accept(layer)``, kept in sync with the layer list."""

    def __init__(self, viewer: Any, accept: Callable[[Any], bool], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer, self.accept = viewer, accept
        for name in ("inserted", "removed", "reordered"):
            getattr(viewer.layers.events, name).connect(self._on_layers)
        for ly in viewer.layers:
            ly.events.name.connect(self.refresh)
        self.refresh()

    def _on_layers(self, event: Any = None) -> None:
        layer = getattr(event, "value", None)
        if getattr(event, "type", "") == "inserted" and layer is not None:
            layer.events.name.connect(self.refresh)
        self.refresh()

    def refresh(self, event: Any = None) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        self.addItems([ly.name for ly in self.viewer.layers if self.accept(ly)])
        idx = self.findText(current)
        self.setCurrentIndex(idx if idx >= 0 else self.count() - 1)
        self.blockSignals(False)
        if self.currentText() != current:
            self.currentIndexChanged.emit(self.currentIndex())

    def layer(self) -> Any | None:
        name = self.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def set_layer(self, layer: Any) -> None:
        self.refresh()
        self.setCurrentIndex(self.findText(layer.name))
