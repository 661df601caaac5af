"""Shared widget plumbing: background jobs (progress, cancel, events delivered on the GUI thread),
slide-layer lookups and coordinate conversion, cross-widget signals and a region-source registry, the
choices several widgets offer (devices, data sources), a row layout helper and the triton/LLVM guard."""

from __future__ import annotations

import logging
import queue
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal
from qtpy.QtCore import QObject, Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from protoseg.cancel import Cancelled, CancelToken
from protoseg.classes import BCSS_WSSS, FALLBACK_COLORS, LUAD_HISTOSEG, ClassSpec
from protoseg.errors import ProtosegError

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


# ---- triton / Mesa LLVM ------------------------------------------------------------------------
def guard_triton_llvm_clash() -> bool:
    """Keep triton out of a process whose OpenGL driver already loaded Mesa's libLLVM (llvmpipe, radeonsi).

    Loading triton's own LLVM after that segfaults the viewer; torch imports triton only for
    ``torch.compile`` (torchvision -> torch._dynamo probes for it), which protoseg does not use.
    Call it before code that may import torchvision (building a model, starting a job); it is cheap
    and idempotent. Returns True when triton was marked unavailable.
    """
    if "triton" in sys.modules:
        return False
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:  # not Linux: no Mesa libLLVM clash
        return False
    if "libLLVM" not in maps:
        return False
    sys.modules["triton"] = None  # type: ignore[assignment]  # `import triton` now raises ImportError
    logger.info("OpenGL uses Mesa's LLVM: triton disabled in this napari session to avoid an LLVM clash")
    return True


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
_USER_MPP: dict[str, float] = {}  # resolved slide path -> µm/px the user gave (slides that record none)
_REGION_SOURCES: dict[str, RegionSource] = {}


def register_regions(source: RegionSource) -> None:
    """Make tagged regions available to the Train and Image bank widgets (replaces a same-named one)."""
    _REGION_SOURCES[source.name] = source
    regions_changed.emit(source.name)


def region_sources() -> dict[str, RegionSource]:
    """Registered region sources by name (a copy)."""
    return dict(_REGION_SOURCES)


# ---- layers and coordinates ------------------------------------------------------------------
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


def classes_from_checkpoint(path: str | Path) -> ClassSpec:
    """Classes stored in a protoseg checkpoint."""
    from protoseg.models.checkpoint import load_checkpoint

    return load_checkpoint(path).classes


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


# ---- background jobs ---------------------------------------------------------------------------
class BackgroundJob(QObject):
    """Run ``fn(report, cancel)`` in a napari thread worker; never blocks the GUI.

    ``report(item)`` may be called from the worker thread: items are queued and handed to
    ``on_events(list_of_items)`` on the GUI thread every ``interval_ms`` (batched, so a fast loop cannot
    flood the event loop). ``on_done(result)`` or ``on_error(exc)`` run on the GUI thread after the last
    events. ``cancel()`` sets the ``CancelToken`` the function is expected to honour; a function that
    stops by raising ``protoseg.cancel.Cancelled`` reaches ``on_error`` with it (logged as info, not as a failure).
    """

    def __init__(
        self,
        fn: Callable[[Callable[[Any], None], CancelToken], Any],
        on_events: Callable[[list[Any]], None] | None = None,
        on_done: Callable[[Any], None] | None = None,
        on_error: Callable[[BaseException], None] | None = None,
        interval_ms: int = 50,
        parent: QObject | None = None,
    ) -> None:
        super().__init__(parent)
        self.fn, self.on_events, self.on_done, self.on_error = fn, on_events, on_done, on_error
        self.token = CancelToken()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._timer = QTimer(self)
        self._timer.setInterval(interval_ms)
        self._timer.timeout.connect(self._drain)
        self._outcome: tuple[str, Any] | None = None
        self.worker: Any = None
        self.finished = False

    def start(self) -> BackgroundJob:
        from napari.qt.threading import create_worker

        guard_triton_llvm_clash()  # the job may import torchvision after OpenGL started
        self.worker = create_worker(self.fn, self._queue.put, self.token, _start_thread=False, _ignore_errors=True)
        self.worker.returned.connect(lambda r: self._set_outcome("done", r))
        self.worker.errored.connect(lambda e: self._set_outcome("error", e))
        self.worker.finished.connect(self._finish)
        self._timer.start()
        self.worker.start()
        return self

    @property
    def running(self) -> bool:
        return self.worker is not None and not self.finished

    def cancel(self) -> None:
        self.token.cancel()

    def _set_outcome(self, kind: str, value: Any) -> None:
        self._outcome = (kind, value)

    def _drain(self) -> None:
        items = []
        while True:
            try:
                items.append(self._queue.get_nowait())
            except queue.Empty:
                break
        if items and self.on_events is not None:
            self.on_events(items)

    def _finish(self) -> None:
        self._timer.stop()
        self._drain()
        self.finished = True
        kind, value = self._outcome or ("error", RuntimeError("background job ended without a result"))
        if kind == "done" and self.on_done is not None:
            self.on_done(value)
        elif kind == "error":
            if isinstance(value, Cancelled):
                logger.info("background job stopped: %s", value)
            else:
                logger.error("background job failed: %s", value, exc_info=value)
            if self.on_error is not None:
                self.on_error(value)


class NapariProgress:
    """One napari activity-dock progress bar that follows (done, total, description) updates."""

    def __init__(self) -> None:
        self._bar: Any = None
        self._key: tuple[int, str] | None = None

    def update(self, done: int, total: int, desc: str) -> None:
        from napari.utils import progress

        if self._key != (total, desc):
            self.close()
            self._bar, self._key = progress(total=max(0, int(total)), desc=desc), (total, desc)
        delta = int(done) - int(self._bar.n)
        if delta:
            self._bar.update(delta)

    @property
    def n(self) -> int:
        return int(self._bar.n) if self._bar is not None else 0

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._key = None, None
