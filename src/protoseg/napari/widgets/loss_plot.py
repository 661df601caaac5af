"""Live training plot of the Train widget: loss curve and validation mIoU, one panel per stage, redrawn at
most a few times a second."""

from __future__ import annotations

import time
from typing import Any

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QVBoxLayout, QWidget

from protoseg.train.events import EventKind, TrainEvent

COLOURS = {"stage1": "#4c9be8", "stage2": "#f0a04b"}


STAGES = ("stage1", "stage2")
STAGE_TITLES = {"stage1": "stage 1: classification (CAMs)", "stage2": "stage 2: segmentation"}


class LossPlot(QWidget):
    """Live loss curve and validation mIoU points, one panel per stage (each stage counts its own steps);
    redraws at most ``max_fps`` times a second."""

    def __init__(self, max_fps: float = 5.0, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        fig = Figure(figsize=(4, 3.2), facecolor="#262930")
        fig.subplots_adjust(left=0.14, right=0.86, bottom=0.12, top=0.93, hspace=0.6)
        self.canvas = FigureCanvasQTAgg(fig)
        self.canvas.setMinimumHeight(220)
        self.axes = {stage: fig.add_subplot(2, 1, i + 1) for i, stage in enumerate(STAGES)}
        self.val_axes = {stage: ax.twinx() for stage, ax in self.axes.items()}
        for stage, ax in self.axes.items():
            for a in (ax, self.val_axes[stage]):
                a.set_facecolor("#262930")
                a.tick_params(colors="#d0d0d0", labelsize=7)
                for spine in a.spines.values():
                    spine.set_color("#808080")
            ax.set_title(STAGE_TITLES[stage], color=COLOURS[stage], fontsize=8, pad=3)
            ax.set_xlabel(f"{stage} step", color="#d0d0d0", fontsize=7, labelpad=1)
            ax.set_ylabel("loss", color="#d0d0d0", fontsize=7)
            self.val_axes[stage].set_ylabel("val mIoU", color="#e06c6c", fontsize=7)
        self.ax = self.axes["stage1"]  # stage 1's panel (kept for callers of the single-panel plot)
        for ax in self.val_axes.values():
            ax.set_ylim(0, 1)  # mIoU is a fraction: a fixed scale reads the same in both panels
        self.interval = 1.0 / max_fps
        self.losses: dict[str, tuple[list[int], list[float]]] = {}
        self.val: dict[str, tuple[list[int], list[float]]] = {}
        self._lines: dict[str, Any] = {}
        self._last_draw, self.redraws = 0.0, 0
        self._timer = QTimer(self, singleShot=True)
        self._timer.timeout.connect(self.redraw)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)

    def clear(self) -> None:
        self.losses, self.val = {}, {}
        for line in self._lines.values():
            line.remove()
        self._lines = {}
        self.redraw()

    def add(self, event: TrainEvent) -> None:
        if event.kind is EventKind.STEP and "loss" in event.losses:
            xs, ys = self.losses.setdefault(event.stage, ([], []))
            xs.append(event.step)
            ys.append(float(event.losses["loss"]))
        elif event.kind is EventKind.VALIDATION and "mIoU" in event.metrics:
            xs, ys = self.val.setdefault(event.stage, ([], []))
            xs.append(event.step)
            ys.append(float(event.metrics["mIoU"]))

    def request_redraw(self) -> None:
        """Redraw now, or once the throttle interval has passed (one pending redraw at most)."""
        wait = self._last_draw + self.interval - time.perf_counter()
        if wait <= 0:
            self.redraw()
        elif not self._timer.isActive():
            self._timer.start(int(wait * 1000) + 1)

    def redraw(self) -> None:
        for key, (xs, ys) in [
            *((f"loss:{s}", v) for s, v in self.losses.items()),
            *((f"val:{s}", v) for s, v in self.val.items()),
        ]:
            kind, stage = key.split(":")
            if key not in self._lines:
                panel = stage if stage in self.axes else "stage1"
                ax = self.axes[panel] if kind == "loss" else self.val_axes[panel]
                style = {"lw": 1.2} if kind == "loss" else {"ls": "none", "marker": "o", "ms": 4, "mfc": "#e06c6c"}
                self._lines[key] = ax.plot(
                    [], [], color=COLOURS.get(stage, "#c0c0c0"), label=f"{kind} {stage}", **style
                )[0]
            self._lines[key].set_data(xs, ys)
        for ax in self.axes.values():
            ax.relim()
            ax.autoscale_view()
        self.canvas.draw_idle()
        self._last_draw = time.perf_counter()
        self.redraws += 1
