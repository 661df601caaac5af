"""Bank encoder controls of the Image bank dock: the encoder family, the model name and its weights (an hf-hub
id, a tag, or a local file or folder picked with a browse button). Thin: ``protoseg.models.encoders.spec``
checks the choice (no torch here); the model loads in the build worker."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox, QFileDialog, QHBoxLayout, QLineEdit, QPushButton, QWidget

from protoseg.models.encoders.spec import EncoderKind, EncoderSpec, encoder_choice

#: (label shown, ``bank.encoder.kind``, model name placeholder) of each choice.
CHOICES: tuple[tuple[str, EncoderKind, str], ...] = (
    ("Built-in H&E descriptor", EncoderKind.DESCRIPTOR, ""),
    ("open_clip (CLIP, QuiltNet, PLIP)", EncoderKind.OPEN_CLIP, "ViT-B-32, or hf-hub:org/repo"),
    ("timm (pathology encoders)", EncoderKind.TIMM, "resnet50, or hf-hub:org/repo"),
)
WEIGHTS_HINT = "hf-hub:org/repo, a tag (openai), or a local file / folder"
WEIGHTS_TIP = (
    "hf-hub:org/repo is downloaded once into the Hugging Face cache and read from it offline; without "
    "network, copy the model's folder here (hf download org/repo --local-dir DIR on a connected machine) "
    "and choose it with 'Folder…'. Empty: random init."
)


class EncoderPicker(QWidget):
    """Which encoder a new bank embeds patches with; ``spec()`` is the checked ``EncoderSpec``."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kind = QComboBox()
        for label, kind, _ in CHOICES:
            self.kind.addItem(label, kind.value)
        self.kind.setToolTip("encoder that embeds the bank's patches (bank.encoder.kind)")
        self.kind.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.kind.setMinimumContentsLength(16)  # long labels never widen the dock
        self.name = QLineEdit()
        self.name.setToolTip("open_clip / timm model name, or hf-hub:org/repo (bank.encoder.model_name)")
        self.weights = QLineEdit()
        self.weights.setPlaceholderText(WEIGHTS_HINT)
        self.weights.setToolTip(WEIGHTS_TIP)
        self.file_btn, self.folder_btn = QPushButton("File…"), QPushButton("Folder…")
        self.file_btn.clicked.connect(self.browse_file)
        self.folder_btn.clicked.connect(self.browse_folder)
        self.weights_row = QWidget()
        layout = QHBoxLayout(self.weights_row)
        layout.setContentsMargins(0, 0, 0, 0)
        for w in (self.weights, self.file_btn, self.folder_btn):
            layout.addWidget(w)
        self.kind.currentIndexChanged.connect(self._kind_changed)
        self._kind_changed()

    def rows(self) -> list[tuple[str, QWidget]]:
        """(label, widget) rows for the dock's form."""
        return [("Encoder", self.kind), ("Model", self.name), ("Weights", self.weights_row)]

    def set_choice(self, kind: str, name: str = "", weights: str = "") -> None:
        """Select ``kind`` and type ``name`` and ``weights`` (as a user would)."""
        self.kind.setCurrentIndex(max(0, self.kind.findData(EncoderKind(kind).value)))
        self.name.setText(name)
        self.weights.setText(weights)

    def _kind_changed(self, *_: object) -> None:
        """Model and weights apply to open_clip / timm only; the placeholder names a model of that family."""
        kind = EncoderKind(self.kind.currentData())
        named = kind is not EncoderKind.DESCRIPTOR
        for w in (self.name, self.weights_row):
            w.setEnabled(named)
        self.name.setPlaceholderText(next(hint for _, k, hint in CHOICES if k is kind))

    def browse_file(self) -> str:
        """Choose a weights file (.safetensors / .pth / .bin / .pt)."""
        path, _ = QFileDialog.getOpenFileName(
            self, "Encoder weights file", self.weights.text(), "Weights (*.safetensors *.pth *.bin *.pt);;All (*)"
        )
        if path:
            self.weights.setText(path)
        return path

    def browse_folder(self) -> str:
        """Choose a model folder (open_clip_config.json or config.json + weights)."""
        path = QFileDialog.getExistingDirectory(self, "Encoder model folder", self.weights.text())
        if path:
            self.weights.setText(path)
        return path

    def spec(self) -> EncoderSpec:
        """The chosen encoder, checked now (a missing path or name raises ``EncoderError``); loads nothing."""
        kind = EncoderKind(self.kind.currentData())
        if kind is EncoderKind.DESCRIPTOR:
            return encoder_choice(kind.value)
        return encoder_choice(kind.value, self.name.text(), self.weights.text())
