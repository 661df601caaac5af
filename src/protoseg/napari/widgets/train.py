"""Train widget: dataset or tagged regions, recipe, add-ons and hyper-parameters; runs stage 1 (and
optionally pseudo-masks + stage 2) in a thread worker with progress, a live loss curve and cancel."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QWidget,
)

from protoseg.config import AddOn, ProtosegConfig, Recipe, Sampling, WarmStart
from protoseg.napari.gl_guard import RemovalGuard
from protoseg.napari.widgets._common import (
    DEVICES,
    FOLDER,
    REGIONS,
    PathEdit,
    StatusLabel,
    WidgetError,
    checkpoint_ready,
    describe_tiling,
    region_sources,
    regions_changed,
    remember_checkpoint,
    rgb_to_hex,
    row,
    scroll_layout,
    set_training_patch,
    tabify_when_docked,
)
from protoseg.napari.widgets.jobs import NapariProgress, ProcessJob
from protoseg.napari.widgets.loss_plot import LossPlot
from protoseg.train.events import EventKind, TrainEvent

if TYPE_CHECKING:
    from protoseg.train.outcome import CheckpointFacts, JobOutcome

logger = logging.getLogger(__name__)

BACKBONES = ("resnet18", "pvt_v2_b0", "pvt_v2_b1", "resnet50", "convnext_tiny")


#: most patch boxes 'Preview patches' draws (napari's Shapes layer slows down with tens of thousands)
PREVIEW_BOXES = 2000
#: the child-process job that trains (imported only in the child: the viewer never loads torch for it)
TRAINING_JOB = "protoseg.train.jobs:training_job"
NO_PRESET = "(protoseg defaults)"
#: Backbone start choices (``model.weights``): label -> config value; any other text is a weights file.
WEIGHTS = {
    "ImageNet (auto)": "auto",
    "ImageNet (torch.hub)": "hub",
    "random init": None,
}


def available_presets() -> list[str]:
    """Names from ``protoseg.presets.list_presets()``; empty when that API is absent or fails."""
    try:
        from protoseg.presets import list_presets
    except ImportError:
        return []
    try:
        return list(list_presets())
    except Exception as exc:  # noqa: BLE001 - a broken preset package must not break the dock
        logger.warning("presets unavailable: %s", exc)
        return []


def preset_config(name: str) -> ProtosegConfig:
    """The full configuration of a preset (``protoseg.presets.load_preset``)."""
    from protoseg.presets import load_preset

    return load_preset(name)


def describe_metric(outcome: JobOutcome, classes: int | None = None) -> str:
    """The final score with its context: which metric, which split, which model, what it means."""
    if outcome.metric is None:
        return "no score: the data has no validation masks (the checkpoint is the last epoch's)"
    stage = "stage 2 segmentation" if outcome.stage2 is not None else "stage 1 (CAM-derived masks)"
    chance = f"; a model guessing one class everywhere scores about {1 / classes:.2f}" if classes else ""
    return (
        f"best val mIoU {outcome.metric:.3f} — {stage} on the validation split: mean over classes of the "
        f"overlap / union of predicted and true masks (0 = none, 1 = perfect{chance}). A short or small run "
        "scores low; judge the overlays too"
    )


class TrainWidget(QWidget):
    """napari dock widget that trains protoseg models without blocking the viewer."""

    def __init__(self, napari_viewer: Any) -> None:
        super().__init__()
        self._gl_guard = RemovalGuard(napari_viewer, self)  # napari/Mesa crash after removing layers
        tabify_when_docked(self)  # Plugins > protoseg docks share one tab group, each at full height
        self.viewer = napari_viewer
        self.preset = QComboBox()
        self.preset.addItems([NO_PRESET, *available_presets()])
        self.preset.setToolTip("paper defaults of a method + dataset (protoseg presets); fills the form")
        self.weights = QComboBox(editable=True)
        self.weights.addItems(list(WEIGHTS))
        self.weights.setToolTip(
            "how the backbone starts: ImageNet weights (auto: from the cache or downloaded, else random init with a "
            "warning), random init, or type the path of a weights file"
        )
        self._base: ProtosegConfig = ProtosegConfig()
        self.source = QComboBox()
        self.source.addItems([FOLDER, REGIONS])
        self.folder = PathEdit("dir", "BCSS-WSSS / LUAD-HistoSeg / generic folder")
        self.regions = QComboBox()
        self.tiling = StatusLabel()  # patches per class the tagged regions give at the patch size
        self.preview_btn = QPushButton("Preview patches on the slide")
        self.recipe = QComboBox()
        self.recipe.addItems([r.value for r in Recipe])
        self.recipe.setCurrentText(Recipe.PBIP.value)
        self.addons = {a: QCheckBox(a.value.upper()) for a in AddOn}
        self.backbone = QComboBox(editable=True)
        self.backbone.addItems(BACKBONES)
        self.backbone.setCurrentText(ProtosegConfig().model.backbone)
        self.epochs = QSpinBox(minimum=1, maximum=1000, value=10)
        self.epochs2 = QSpinBox(minimum=1, maximum=1000, value=10)
        self.batch = QSpinBox(minimum=1, maximum=512, value=8)
        self.balance = QCheckBox("Balance classes (stage 1)")
        self.balance.setChecked(ProtosegConfig().stage1.sampling is Sampling.BALANCED)
        self.balance.setToolTip(
            "stage 1 draws its patches so that rare image-level classes are seen as often as common ones "
            "(stage1.sampling=balanced; measured on real tissue in docs/interfaces.md)"
        )
        self.warm = QCheckBox("SimCLR warm start")
        self.warm.setChecked(ProtosegConfig().stage1.warm_start is WarmStart.SIMCLR)
        self.warm.setToolTip(
            "when the backbone has no pretrained weights (random init, offline): first learn from the unlabelled "
            "training patches (SimCLR, stage1.warm_start=simclr; 400 steps, minutes on a CPU; off by default, measured "
            "on real tissue in docs/interfaces.md); skipped for pretrained weights"
        )
        self.warm_steps = QSpinBox(minimum=1, maximum=100_000, value=ProtosegConfig().stage1.warm_start_steps)
        self.warm_steps.setToolTip("self-supervised steps of the warm start (stage1.warm_start_steps)")
        self.warm.toggled.connect(self.warm_steps.setEnabled)
        self.warm_steps.setEnabled(self.warm.isChecked())
        self.lr = QDoubleSpinBox(decimals=6, minimum=1e-6, maximum=1.0, singleStep=1e-5, value=1e-4)
        self.patch = QSpinBox(minimum=32, maximum=2048, singleStep=32, value=224)
        self.patch.setToolTip("side of the patches cut from tagged regions (data.patch_size)")
        self.scale = QDoubleSpinBox(decimals=3, minimum=0.05, maximum=4.0, singleStep=0.25, value=1.0)
        self.scale.setToolTip(
            "a dataset folder's patches resampled by this factor before training (data.scale): 0.5 = half the "
            "resolution, a quarter of the pixels per step and twice the tissue the network sees at once"
        )
        self.bank = PathEdit("dir", "PBIP: built into <output>/bank when empty")
        self.device = QComboBox()
        self.device.addItems(DEVICES)
        self.out = PathEdit("dir", "run folder (checkpoints in stage1/ and stage2/)")
        self.stage2 = QCheckBox("Pseudo-masks + stage 2 after stage 1")
        self.resume = QCheckBox("Resume from last.pt")
        self.overwrite = QCheckBox("Replace an earlier run")
        self.overwrite.setToolTip("train from scratch into an output folder that holds an earlier run's checkpoints")
        self.start_btn, self.cancel_btn = QPushButton("Start"), QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.bar = QProgressBar()
        self.status, self.result = StatusLabel(), StatusLabel()
        self.plot = LossPlot()
        self.job: ProcessJob | None = None
        self.outcome: JobOutcome | None = None
        self.progress = NapariProgress()
        self._build_layout()
        self.source.currentTextChanged.connect(self._on_source)
        self.preset.currentTextChanged.connect(lambda name: self.status.guard(lambda: self.apply_preset(name)))
        self.start_btn.clicked.connect(lambda: self.status.guard(self.start))
        self.cancel_btn.clicked.connect(self.cancel)
        regions_changed.connect(self._refresh_regions)
        self.patch.valueChanged.connect(self._on_patch)
        set_training_patch(self.patch.value())
        self.regions.currentTextChanged.connect(lambda *_: self.status.guard(self.describe_regions))
        self.preview_btn.clicked.connect(lambda: self.status.guard(self.preview_patches))
        self._patch_layer: Any = None
        self._refresh_regions()
        self._on_source()

    def _build_layout(self) -> None:
        form = QFormLayout()
        form.addRow("Preset", self.preset)
        form.addRow("Data", self.source)
        form.addRow("Folder", self.folder)
        form.addRow("Regions", self.regions)
        form.addRow("", self.tiling)
        form.addRow("", self.preview_btn)
        form.addRow("Recipe", self.recipe)
        addons = QHBoxLayout()
        for box in self.addons.values():
            addons.addWidget(box)
        form.addRow("Add-ons", addons)
        form.addRow("Backbone", self.backbone)
        form.addRow("Weights", self.weights)
        form.addRow("Epochs (stage 1 / 2)", row(self.epochs, self.epochs2))
        form.addRow("Batch size", self.batch)
        form.addRow("Sampling", self.balance)
        form.addRow("Random init", self.warm)
        form.addRow("Warm-start steps", self.warm_steps)
        form.addRow("Learning rate", self.lr)
        form.addRow("Patch size (px)", self.patch)
        form.addRow("Folder patches × (resample)", self.scale)
        form.addRow("Bank folder", self.bank)
        form.addRow("Device", self.device)
        form.addRow("Output folder", self.out)
        root = scroll_layout(self)
        # the action and its progress first: visible without scrolling in a short window
        root.addWidget(row(self.start_btn, self.cancel_btn))
        root.addWidget(self.bar)
        root.addWidget(self.status)
        root.addWidget(self.result)
        root.addWidget(self.plot)
        root.addLayout(form)
        root.addWidget(self.stage2)
        root.addWidget(row(self.resume, self.overwrite))
        root.addStretch(1)

    def _on_source(self, *_: Any) -> None:
        by_folder = self.source.currentText() == FOLDER
        self.folder.setEnabled(by_folder)
        self.regions.setEnabled(not by_folder)
        self.patch.setEnabled(not by_folder)  # folder patches keep their size; regions are cut at it
        self.scale.setEnabled(by_folder)  # regions are read at run.mpp instead
        self.tiling.setVisible(not by_folder)
        self.preview_btn.setVisible(not by_folder)
        if not by_folder:
            self.status.guard(self.describe_regions)

    def _on_patch(self, size: int) -> None:
        set_training_patch(size)
        if self.source.currentText() == REGIONS:
            self.status.guard(self.describe_regions)

    def region_tiling(self) -> Any:
        """The tiling training will use for the chosen tagged regions at the form's patch size."""
        source = region_sources().get(self.regions.currentText())
        if source is None:
            raise WidgetError("no tagged regions yet: use 'Use as training data' in the Region tagging widget")
        from protoseg.data.region_tiling import tile_region_source

        return tile_region_source(source, self.patch.value())

    def describe_regions(self) -> Any:
        """Show, before training, the patches per class and the regions too small at the patch size."""
        if not region_sources().get(self.regions.currentText()):
            self.tiling.ok("")
            return None
        tiling = self.region_tiling()
        text = describe_tiling(tiling, self.regions.currentText())
        (self.tiling.error if tiling.too_small or not tiling.patches else self.tiling.ok)(text)
        return tiling

    def preview_patches(self) -> Any:
        """Draw the training patch boxes on the slides open in the viewer (one protoseg Shapes layer,
        replaced on each preview; at most PREVIEW_BOXES boxes)."""
        from napari.layers import Shapes

        from protoseg.napari.widgets.slide_info import find_slide_layer

        tiling = self.describe_regions()
        if tiling is None:
            raise WidgetError("choose tagged regions first")
        if self._patch_layer is not None and self._patch_layer in self.viewer.layers:
            self.viewer.layers.remove(self._patch_layer)
        by_slide: dict[str, list] = {}
        for p in tiling.patches[:PREVIEW_BOXES]:
            by_slide.setdefault(p.slide_path, []).append(p)
        drawn = 0
        for path, patches in by_slide.items():
            slide = find_slide_layer(self.viewer, path)
            if slide is None:
                continue
            rects = [np.array([[y, x], [y + h, x + w]], float) for x, y, w, h in (p.box for p in patches)]
            colours = [self._class_colour(p.label) for p in patches]
            self._patch_layer = self.viewer.add_layer(
                Shapes(
                    rects,
                    shape_type="rectangle",
                    edge_color=colours,
                    face_color="transparent",
                    edge_width=max(1.0, 0.02 * float(np.median([w for *_, w, _h in (p.box for p in patches)]))),
                    scale=tuple(slide.scale[-2:]),
                    translate=tuple(slide.translate[-2:]),
                    units=tuple(slide.units[-2:]),
                    name=f"training patches: {self.regions.currentText()}",
                    metadata={"protoseg_overlay": {"kind": "patches"}},
                )
            )
            drawn += len(rects)
            break  # one layer: the first slide in view with patches
        capped = f" (the first {PREVIEW_BOXES})" if len(tiling.patches) > PREVIEW_BOXES else ""
        self.status.ok(f"{drawn} patch boxes drawn{capped}, coloured by their first class")
        return self._patch_layer

    def _class_colour(self, label: Any) -> str:
        """Hex colour of a patch's first class (the tagged regions' class colours)."""
        source = region_sources().get(self.regions.currentText())
        first = next((i for i, v in enumerate(label) if v), None)
        if source is None or first is None:
            return "#ffffff"
        return rgb_to_hex(source.classes.colors[first])

    def _refresh_regions(self, name: str = "") -> None:
        try:
            current = self.regions.currentText()
            self.regions.clear()
            self.regions.addItems(sorted(region_sources()))
        except RuntimeError:  # the widget was deleted by Qt: stop listening
            regions_changed.disconnect(self._refresh_regions)
            return
        if name or current:
            self.regions.setCurrentText(name or current)
        if name and self.source.currentText() == FOLDER:
            self.source.setCurrentText(REGIONS)  # the user just made regions training data: train on them
        if self.source.currentText() == REGIONS:
            self.status.guard(self.describe_regions)

    def build_config(self) -> ProtosegConfig:
        """The run configuration the form describes."""
        out = self.out.text()
        if not out:
            raise WidgetError("choose an output folder for checkpoints")
        by_folder = self.source.currentText() == FOLDER
        root = self.folder.text() if by_folder else ""
        if by_folder and not root:
            raise WidgetError("choose a dataset folder (or switch Data to 'Tagged regions')")
        cfg = self._base
        backbone = self.backbone.currentText().strip()
        addons = tuple(a for a, box in self.addons.items() if box.isChecked())
        return replace(
            cfg,
            data=replace(
                cfg.data,
                root=root,
                patch_size=self.patch.value(),
                scale=float(self.scale.value()) if by_folder else 1.0,
                batch_size=self.batch.value(),
            ),
            bank=replace(cfg.bank, path=self.bank.text() or None),
            model=replace(cfg.model, backbone=backbone, weights=self.weights_value()),
            stage1=replace(
                cfg.stage1,
                recipe=Recipe(self.recipe.currentText()),
                addons=addons,
                sampling=Sampling.BALANCED if self.balance.isChecked() else Sampling.UNIFORM,
                warm_start=WarmStart.SIMCLR if self.warm.isChecked() else WarmStart.NONE,
                warm_start_steps=self.warm_steps.value(),
                epochs=self.epochs.value(),
                lr=float(self.lr.value()),
            ),
            stage2=replace(cfg.stage2, backbone=backbone, weights=self.weights_value(), epochs=self.epochs2.value()),
            run=replace(cfg.run, out_dir=out, device=self.device.currentText()),
        )

    def weights_value(self) -> str | None:
        """``model.weights`` from the Weights choice ("auto", "hub", None) or a typed file path."""
        text = self.weights.currentText().strip()
        return WEIGHTS.get(text, text or None)

    def set_weights(self, value: str | None) -> None:
        label = next((k for k, v in WEIGHTS.items() if v == value), None)
        self.weights.setCurrentText(label if label is not None else str(value))

    def apply_preset(self, name: str) -> ProtosegConfig:
        """Use a preset: its configuration becomes the base of the run and fills the form."""
        cfg = ProtosegConfig() if name in ("", NO_PRESET) else preset_config(name)
        self._base = cfg
        self.recipe.setCurrentText(cfg.stage1.recipe.value)
        for addon, box in self.addons.items():
            box.setChecked(addon in cfg.stage1.addons)
        self.backbone.setCurrentText(cfg.model.backbone)
        self.set_weights(cfg.model.weights)
        self.epochs.setValue(cfg.stage1.epochs)
        self.epochs2.setValue(cfg.stage2.epochs)
        self.batch.setValue(cfg.data.batch_size)
        self.lr.setValue(cfg.stage1.lr)
        self.patch.setValue(cfg.data.patch_size)
        self.scale.setValue(cfg.data.scale)
        self.balance.setChecked(cfg.stage1.sampling is Sampling.BALANCED)
        self.warm.setChecked(cfg.stage1.warm_start is WarmStart.SIMCLR)
        self.warm_steps.setValue(cfg.stage1.warm_start_steps)
        if name not in ("", NO_PRESET):
            self.status.ok(f"preset {name}: form filled with its values; change any before Start")
        return cfg

    def start(self) -> ProcessJob:
        """Start training in a child process (errors in the form are shown in the status line)."""
        if self.job is not None and self.job.running:
            raise WidgetError("a training run is already going; cancel it first")
        cfg = self.build_config()
        regions = None
        if self.source.currentText() == REGIONS:
            regions = region_sources().get(self.regions.currentText())
            if regions is None:
                raise WidgetError("no tagged regions yet: use 'Use as training data' in the Region tagging widget")
        stage2, resume = self.stage2.isChecked(), self.resume.isChecked()
        if resume and self.overwrite.isChecked():
            raise WidgetError("tick either 'Resume' or 'Replace an earlier run', not both")
        overwrite = self.overwrite.isChecked()
        kwargs = {"cfg": cfg, "regions": regions, "stage2": stage2, "resume": resume, "overwrite": overwrite}
        self.plot.clear()
        self.outcome = None
        self.result.ok("")
        self.bar.setValue(0)
        self.bar.setRange(0, 0)  # busy until the first step: data loading and model building take a while
        self.bar.setFormat("preparing…")
        self.status.ok("preparing the data and the model…")
        self.start_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        self.job = ProcessJob(TRAINING_JOB, kwargs, self._on_events, self._on_done, self._on_error, parent=self).start()
        return self.job

    def cancel(self) -> None:
        """Ask the run to stop after the current step; its last checkpoint stays usable."""
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.ok("cancelling… (stops after the current step)")

    def closeEvent(self, event: Any) -> None:
        """Closing the dock stops a running training (it keeps its last checkpoint)."""
        self.cancel()
        super().closeEvent(event)

    def shutdown(self) -> None:
        """Stop the training process at once (the viewer is closing)."""
        if self.job is not None and self.job.running:
            self.job.kill()

    def _on_events(self, events: list[TrainEvent]) -> None:
        for ev in events:
            self.plot.add(ev)
        last = events[-1]
        self.bar.setMaximum(max(1, last.total_steps))
        self.bar.setValue(min(last.step, last.total_steps))
        self.bar.setFormat(f"{last.stage} %v/%m")
        if last.total_steps:
            self.progress.update(last.step, last.total_steps, f"protoseg {last.stage}")
        loss = last.losses.get("loss")
        text = f"{last.stage}: epoch {last.epoch + (last.kind is EventKind.STEP)}, step {last.step}/{last.total_steps}"
        self.status.ok(
            text + (f", loss {loss:.4f}" if loss is not None else "") + (f" — {last.message}" if last.message else "")
        )
        self.plot.request_redraw()

    def _finish(self) -> None:
        self.progress.close()
        self.plot.redraw()
        self.start_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_done(self, result: tuple[JobOutcome, CheckpointFacts | None]) -> None:
        outcome, facts = result
        classes = facts.classes.num_classes + 1 if facts is not None else None
        if facts is not None and outcome.checkpoint.is_file():
            remember_checkpoint(outcome.checkpoint, facts)  # the Predict dock then needs not load it
        self.outcome = outcome
        self._finish()
        metric = f"\n{describe_metric(outcome, classes)}"
        if outcome.cancelled:
            self.status.ok("cancelled")
            last = outcome.stage1.last if outcome.stage2 is None else outcome.stage2.last
            if not last.is_file():  # cancelled before the first checkpoint (e.g. during the warm start)
                self.result.ok("Cancelled before any checkpoint was written")
                return
            self.result.ok(f"Cancelled; last checkpoint: {last} — tick 'Resume' and Start to continue")
            return
        self.status.ok(f"done in {outcome.stage1.seconds + (outcome.stage2.seconds if outcome.stage2 else 0):.1f} s")
        self.result.ok(f"Checkpoint: {outcome.checkpoint}{metric}")
        checkpoint_ready.emit(str(outcome.checkpoint))

    def _on_error(self, exc: BaseException) -> None:
        self._finish()
        self.status.error(f"training failed: {exc}")
