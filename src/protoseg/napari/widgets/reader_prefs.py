"""The button that makes protoseg napari's reader for whole-slide files, only when the user clicks it."""

from __future__ import annotations

from qtpy.QtWidgets import QPushButton, QVBoxLayout, QWidget

from protoseg.napari.preferences import PATTERNS, ReaderPreference, prefer_protoseg_reader
from protoseg.napari.widgets._common import StatusLabel


class ReaderPreferenceButton(QWidget):
    """The "Open whole-slide files with protoseg" button and a status line naming the patterns assigned and
    those left to the user's existing choice (napari's reader preferences change only here, on click)."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.button = QPushButton("Open whole-slide files with protoseg")
        self.button.setToolTip(
            "Set protoseg as napari's reader for " + " ".join(PATTERNS) + " where you have not chosen one "
            "(no reader dialog on File > Open); change it any time in File > Preferences > Plugins"
        )
        self.status = StatusLabel()
        self.button.clicked.connect(self.apply)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.addWidget(self.button)
        box.addWidget(self.status)

    def apply(self) -> ReaderPreference:
        """Assign the unassigned whole-slide patterns to protoseg and say what was done."""
        result = prefer_protoseg_reader()
        self.status.ok(result.summary())
        return result
