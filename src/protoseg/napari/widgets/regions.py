"""Region tagging widget: draw polygons over a slide, tick the tissue classes present in each, save or
load QuPath GeoJSON, and hand the tagged regions to the Train and Image bank widgets."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from napari.layers import Shapes
from qtpy.QtGui import QColor, QIcon, QPixmap
from qtpy.QtWidgets import (
    QCheckBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from protoseg.classes import BCSS_WSSS, ClassSpec
from protoseg.data.regions import (
    RegionAnnotation,
    RegionSource,
    load_regions_geojson,
    regions_from_napari,
    regions_to_napari,
    save_regions_geojson,
)
from protoseg.napari.gl_guard import RemovalGuard
from protoseg.napari.widgets._common import (
    LayerCombo,
    PathEdit,
    StatusLabel,
    WidgetError,
    classes_from_checkpoint,
    classes_from_dataset,
    classes_from_text,
    describe_tiling,
    layer_to_level0,
    level0_to_layer,
    register_regions,
    row,
    scroll_layout,
    tabify_when_docked,
    training_patch,
)
from protoseg.napari.widgets.reader_prefs import ReaderPreferenceButton
from protoseg.napari.widgets.slide_info import MppPrompt, slide_meta, slide_mpp

logger = logging.getLogger(__name__)

TAGS = "classes"  # feature column holding the tags of a shape as "TUM;LYM" (source of truth)
SEP = ";"
UNTAGGED = (160, 160, 160)
AREA_SHAPES = ("polygon", "rectangle", "ellipse")


def shape_polygon(verts: np.ndarray, kind: str, n: int = 48) -> np.ndarray:
    """Outline of a napari shape as polygon vertices (ellipses are sampled from their 4 box corners)."""
    v = np.asarray(verts, dtype=np.float64)[:, -2:]
    if kind != "ellipse":
        return v
    centre, a, b = v.mean(axis=0), (v[1] - v[0]) / 2, (v[3] - v[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def split_tags(text: Any) -> tuple[str, ...]:
    return tuple(t for t in str(text or "").split(SEP) if t) if isinstance(text, str) else ()


class RegionTagWidget(QWidget):
    """Tag Shapes-layer regions with tissue classes (feature column ``classes`` + one bool column per class)."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self._gl_guard = RemovalGuard(napari_viewer, self)  # napari/Mesa crash after removing layers
        tabify_when_docked(self)  # Plugins > protoseg docks share one tab group, each at full height
        self.viewer = napari_viewer
        self.classes: ClassSpec = BCSS_WSSS
        self.checks: dict[str, QCheckBox] = {}
        self._layer: Any = None
        self.slide_combo = LayerCombo(self.viewer, lambda ly: slide_meta(ly) is not None)
        self.shapes_combo = LayerCombo(self.viewer, lambda ly: isinstance(ly, Shapes))
        self.new_btn = QPushButton("New regions layer")
        self.classes_edit = QLineEdit()
        self.set_classes_btn = QPushButton("Set")
        self.ckpt_btn = QPushButton("From checkpoint…")
        self.dataset_btn = QPushButton("From dataset…")
        self.tag_box = QGroupBox("Classes present in the selected regions")
        self.tag_layout = QVBoxLayout(self.tag_box)
        self.info = QLabel()
        self.geojson = PathEdit("save", "regions.geojson", "GeoJSON (*.geojson *.json)")
        self.save_btn, self.load_btn = QPushButton("Save GeoJSON"), QPushButton("Load GeoJSON")
        self.mpp_spin = QDoubleSpinBox(decimals=3, minimum=0.05, maximum=64.0, singleStep=0.25, value=0.5)
        self.mpp_spin.setSuffix(" µm/px")
        self.mpp_spin.setToolTip("patch resolution of the training data made from the tagged regions")
        self.use_btn = QPushButton("Use as training data")
        self.mpp_prompt = MppPrompt(lambda: self.slide_combo.layer(), self.viewer)
        self.reader_prefs = ReaderPreferenceButton()  # napari's reader preferences change only on its click
        self.status = StatusLabel()
        self.source: RegionSource | None = None
        self._build_layout()
        self.new_btn.clicked.connect(self.new_regions_layer)
        self.set_classes_btn.clicked.connect(
            lambda: self.status.guard(lambda: self.set_classes(classes_from_text(self.classes_edit.text())))
        )
        self.ckpt_btn.clicked.connect(lambda: self._classes_from(classes_from_checkpoint, "open", "*.pt"))
        self.dataset_btn.clicked.connect(lambda: self._classes_from(classes_from_dataset, "dir", ""))
        self.save_btn.clicked.connect(lambda: self.status.guard(self.save_geojson))
        self.load_btn.clicked.connect(lambda: self.status.guard(self.load_geojson))
        self.use_btn.clicked.connect(lambda: self.status.guard(self.use_as_training_data))
        self.slide_combo.currentIndexChanged.connect(self._on_slide)
        self.shapes_combo.currentIndexChanged.connect(self._on_shapes)
        self.set_classes(self.classes)
        self._on_slide()
        self._on_shapes()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Slide", self.slide_combo)
        form.addRow("", self.mpp_prompt)
        form.addRow("Slide files", self.reader_prefs)
        regions_row = QHBoxLayout()
        regions_row.addWidget(self.shapes_combo, 1)
        regions_row.addWidget(self.new_btn)
        form.addRow("Regions", regions_row)
        cls_row = QHBoxLayout()
        cls_row.addWidget(self.classes_edit, 1)
        cls_row.addWidget(self.set_classes_btn)
        form.addRow("Classes", cls_row)
        from_row = QHBoxLayout()
        from_row.addWidget(self.ckpt_btn)
        from_row.addWidget(self.dataset_btn)
        form.addRow("", from_row)
        file_row = QHBoxLayout()
        file_row.addWidget(self.save_btn)
        file_row.addWidget(self.load_btn)
        root = scroll_layout(self)
        # the action and its feedback first: visible without scrolling in a short window
        root.addWidget(row(self.use_btn, self.mpp_spin))
        root.addWidget(self.status)
        root.addLayout(form)
        root.addWidget(self.tag_box)
        root.addWidget(self.info)
        root.addWidget(QLabel("GeoJSON (QuPath)"))
        root.addWidget(self.geojson)
        root.addLayout(file_row)
        root.addStretch(1)

    # ---- classes ----------------------------------------------------------------------------
    def set_classes(self, spec: ClassSpec) -> None:
        """Replace the class list: one checkbox per class; existing tags are kept (as text)."""
        self.classes = spec
        self.classes_edit.setText(", ".join(spec.names))
        for box in self.checks.values():
            self.tag_layout.removeWidget(box)
            box.deleteLater()
        self.checks = {}
        for name, rgb in zip(spec.names, spec.colors):
            box = QCheckBox(name)
            pix = QPixmap(12, 12)
            pix.fill(QColor(*rgb))
            box.setIcon(QIcon(pix))
            box.clicked.connect(lambda checked, n=name: self._on_check(n, checked))
            self.tag_layout.addWidget(box)
            self.checks[name] = box
        if self._layer is not None:
            self._sync()

    def _classes_from(self, loader: Any, mode: str, file_filter: str) -> None:
        path = PathEdit(mode, file_filter=file_filter, parent=self).browse()
        if path:
            self.status.guard(lambda: self.set_classes(loader(path)))

    # ---- layers -----------------------------------------------------------------------------
    def _on_slide(self, *_: Any) -> None:
        slide = self.slide_combo.layer()
        self.mpp_prompt.refresh()
        mpp = slide_mpp(slide) if slide is not None else None
        if mpp:
            self.mpp_spin.setValue(float(mpp))

    def new_regions_layer(self) -> Any:
        """Add an empty Shapes layer "<slide> regions" in world units, ready for drawing polygons."""
        slide = self.slide_combo.layer()
        name = f"{slide.name} regions" if slide is not None else "regions"
        width, units = 2.0, None
        if slide is not None:
            extent = np.asarray(slide.extent.world, dtype=np.float64)
            width, units = float(max(extent[1] - extent[0]) / 400), slide.units
        layer = self.viewer.add_shapes(name=name, ndim=2, edge_width=width, opacity=0.9, units=units)
        layer.mode = "add_polygon"
        self.shapes_combo.set_layer(layer)
        self._on_shapes()
        return layer

    def _on_shapes(self, *_: Any) -> None:
        if self._layer is not None:
            self._layer.selected_data.events.items_changed.disconnect(self._on_selection)
            self._layer.events.data.disconnect(self._on_data)
        self._layer = self.shapes_combo.layer()
        if self._layer is not None:
            self._layer.selected_data.events.items_changed.connect(self._on_selection)
            self._layer.events.data.connect(self._on_data)
            self._sync()
        self._on_selection()

    def _on_data(self, event: Any) -> None:
        if str(getattr(event, "action", "")) in ("added", "removed"):
            self._sync()

    # ---- tags ---------------------------------------------------------------------------------
    def tags(self) -> list[tuple[str, ...]]:
        """Tags of every shape of the current regions layer."""
        layer = self._layer
        if layer is None or TAGS not in layer.features:
            return [()] * (len(layer.data) if layer is not None else 0)
        return [split_tags(v) for v in layer.features[TAGS]]

    def _sync(self, tags: list[tuple[str, ...]] | None = None) -> None:
        """Write tags as features (string + bool per class), defaults, text and per-shape colours."""
        layer = self._layer
        tags = self.tags() if tags is None else tags
        import pandas as pd  # napari's layer features are pandas; imported on first use, not with the dock

        feats = layer.features.copy() if len(layer.features) == len(tags) else pd.DataFrame(index=range(len(tags)))
        feats = feats.drop(columns=[c for c in feats.columns if feats[c].dtype == bool and c not in self.classes.names])
        feats[TAGS] = pd.Series([SEP.join(t) for t in tags], index=feats.index, dtype=object)
        for name in self.classes.names:
            feats[name] = pd.Series([name in t for t in tags], index=feats.index, dtype=bool)
        layer.features = feats
        defaults = {TAGS: SEP.join(n for n, b in self.checks.items() if b.isChecked() and not len(layer.selected_data))}
        layer.feature_defaults = {**defaults, **{n: n in split_tags(defaults[TAGS]) for n in self.classes.names}}
        layer.text = {"string": "{" + TAGS + "}", "color": "black", "size": 10, "anchor": "upper_left"}
        colours = dict(zip(self.classes.names, self.classes.colors))
        rgb = (
            np.array(
                [colours.get(next((n for n in self.classes.names if n in t), ""), UNTAGGED) for t in tags],
                dtype=np.float64,
            ).reshape(-1, 3)
            / 255.0
        )
        if len(rgb):
            layer.edge_color = np.c_[rgb, np.ones(len(rgb))]
            layer.face_color = np.c_[rgb, np.full(len(rgb), 0.15)]
        self._update_info(tags)

    def _on_check(self, name: str, checked: bool) -> None:
        layer = self._layer
        if layer is None:
            self.status.setText("Choose or create a regions (Shapes) layer first.")
            return
        tags = self.tags()
        for i in layer.selected_data:
            present = set(tags[i]) | {name} if checked else set(tags[i]) - {name}
            known = tuple(n for n in self.classes.names if n in present)
            tags[i] = known + tuple(sorted(present - set(self.classes.names)))
        self._sync(tags)

    def _on_selection(self, *_: Any) -> None:
        layer, tags = self._layer, self.tags()
        selected = sorted(layer.selected_data) if layer is not None else []
        for name, box in self.checks.items():
            box.setChecked(bool(selected) and all(name in tags[i] for i in selected))
        self._update_info(tags)

    def _update_info(self, tags: list[tuple[str, ...]]) -> None:
        sel = len(self._layer.selected_data) if self._layer is not None else 0
        tagged = sum(1 for t in tags if t)
        hint = "ticks apply to the selection" if sel else "ticks apply to new shapes"
        self.info.setText(f"{len(tags)} regions, {tagged} tagged; {sel} selected ({hint})")

    # ---- conversion, files, training ------------------------------------------------------------
    def _slide_and_layer(self) -> tuple[Any, Any]:
        slide, layer = self.slide_combo.layer(), self._layer
        if slide is None:
            raise WidgetError("open a slide with the protoseg reader first (File > Open, or the sample data)")
        if layer is None:
            raise WidgetError("choose a regions (Shapes) layer or click 'New regions layer'")
        return slide, layer

    def regions(self) -> list[RegionAnnotation]:
        """Tagged area shapes as level-0 polygons of the chosen slide (untagged and line shapes skipped)."""
        slide, layer = self._slide_and_layer()
        data, tags = [], []
        for verts, kind, t in zip(layer.data, layer.shape_type, self.tags()):
            if t and kind in AREA_SHAPES:
                data.append(layer_to_level0(shape_polygon(verts, kind), layer, slide))
                tags.append(t)
        return regions_from_napari(data, tags, slide_meta(slide)["path"], scale=1.0)

    def save_geojson(self, path: str | None = None) -> str:
        path = path or self.geojson.text() or self.geojson.browse()
        regions = self.regions()
        if not path or not regions:
            raise WidgetError("nothing to save: tag at least one region and choose a file name")
        save_regions_geojson(path, regions, self.classes)
        self.status.ok(f"saved {len(regions)} regions to {path}")
        return path

    def load_geojson(self, path: str | None = None) -> int:
        """Append the polygons of a GeoJSON file to the regions layer (classes not listed are added)."""
        path = path or self.geojson.text() or PathEdit("open", file_filter="GeoJSON (*.geojson *.json)").browse()
        if not path:
            return 0
        if self._layer is None:
            self.new_regions_layer()
        slide, layer = self._slide_and_layer()
        regions = load_regions_geojson(path, slide_path=slide_meta(slide)["path"])
        new = [n for n in dict.fromkeys(c for r in regions for c in r.classes) if n not in self.classes.names]
        if new:
            self.set_classes(classes_from_text(", ".join(self.classes.names + tuple(new))))
        data, tags = regions_to_napari(regions, scale=1.0)
        old = self.tags()
        layer.add_polygons([level0_to_layer(d, layer, slide) for d in data])
        self._sync(old + [tuple(t) for t in tags])
        self.status.ok(f"loaded {len(regions)} regions from {path}")
        return len(regions)

    def use_as_training_data(self) -> RegionSource:
        """Register the tagged regions (named after the layer) for the Train / Image bank widgets."""
        slide, layer = self._slide_and_layer()
        regions = self.regions()
        if not regions:
            raise WidgetError("no tagged regions: select a shape and tick the classes it contains")
        mpp = float(self.mpp_spin.value())
        fallback = None if slide_meta(slide).get("mpp") else slide_mpp(slide)
        if not slide_meta(slide).get("mpp") and fallback is None:
            raise WidgetError(
                f"{slide.name} records no microns-per-pixel: set its scan resolution in the prompt at the top "
                "(0.25 µm/px for 40x, 0.5 for 20x) so the patches are cut at the right scale"
            )
        source = RegionSource(layer.name, tuple(regions), self.classes, mpp, fallback)
        from protoseg.data.region_tiling import tile_region_source  # geometry only: no torch

        tiling = tile_region_source(source, training_patch())  # what training will cut, at its patch size
        if not tiling.patches:
            raise WidgetError(describe_tiling(tiling, layer.name) + ": draw larger regions or lower the patch size")
        register_regions(source)
        self.source = source
        text = f"{describe_tiling(tiling, layer.name)}. Train (Data: Tagged regions) or build a bank from it"
        (self.status.error if tiling.too_small else self.status.ok)(text)
        return source
