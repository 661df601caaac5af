"""Class colour legend shown under the prediction controls."""

from __future__ import annotations

from qtpy.QtWidgets import QGridLayout, QLabel, QWidget

from protoseg.classes import ClassSpec
from protoseg.napari.widgets._common import rgb_to_hex


class Legend(QWidget):
    """Colour swatch + class name rows for the overlay classes."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.grid = QGridLayout(self)
        self.grid.setContentsMargins(0, 0, 0, 0)
        self.rows: list[tuple[str, str]] = []

    def set_classes(self, classes: ClassSpec | None) -> None:
        while self.grid.count():
            self.grid.takeAt(0).widget().deleteLater()
        self.rows = [(n, rgb_to_hex(c)) for n, c in zip(classes.names, classes.colors)] if classes else []
        for i, (name, colour) in enumerate(self.rows):
            swatch = QLabel()
            swatch.setFixedSize(14, 14)
            swatch.setStyleSheet(f"background-color: {colour}; border: 1px solid #888")
            self.grid.addWidget(swatch, i // 2, 2 * (i % 2))
            self.grid.addWidget(QLabel(name), i // 2, 2 * (i % 2) + 1)
