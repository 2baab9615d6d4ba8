"""The model picker: built-in weights, recently used folders, and a folder chooser.

Why a picker of its own and not a text box: the model a user most wants is the one they
trained (a ``whispertune train`` run's ``best/``), which is a folder; choosing it must be one
click, and the window should say what the folder is (and that an adapter is merged and
converted once for the fast backend) before a long first load starts. The folder is only
recognised here, cheaply, from its files; loading it (and saying why it fails) is the
worker's job.
"""

from __future__ import annotations

import json
from pathlib import Path

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QVBoxLayout,
    QWidget,
)

from whispertune.models.builtin import BUILTINS

_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def describe_model(spec: str) -> str:
    """One line that says what a model spec is, from its files (nothing is loaded)."""
    if spec.startswith("builtin:"):
        model = BUILTINS.get(spec.partition(":")[2])
        return f"built-in: {model.description}" if model else "unknown built-in model"
    path = Path(spec).expanduser()
    if not path.exists():
        return "a Hugging Face hub id (needs the hub), or a folder that does not exist"
    if not path.is_dir():
        return "a file, not a model folder"
    if (path / "adapter_config.json").is_file():
        try:
            config = json.loads((path / "adapter_config.json").read_text(encoding="utf-8"))
            base = config.get("base_model_name_or_path") or "?"
        except (OSError, ValueError):
            base = "?"
        return (f"fine-tuned adapter on {base} (merged and converted for ct2 on first load, "
                "then cached)")
    if (path / "config.json").is_file() and any((path / w).exists() for w in _WEIGHTS):
        return "transformers checkpoint (converted for ct2 on first load, then cached)"
    if (path / "model.bin").is_file():
        return "CTranslate2 model"
    return "not a model folder that whispertune recognises"


class ModelPicker(QWidget):
    """An editable list of models (type a spec, pick one, or add a folder) and what it is."""

    changed = Signal(str)

    def __init__(self, recent: list[str], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.combo = QComboBox()
        self.combo.setEditable(True)
        self.combo.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        self.combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.combo.setMinimumContentsLength(16)
        self.combo.setToolTip(
            "builtin:base, builtin:tiny.en, a transformers folder, a 'whispertune train' "
            "run's best/ folder, or a CTranslate2 folder"
        )
        for name in BUILTINS:
            self.combo.addItem(f"builtin:{name}")
        for spec in recent:
            self._add(spec)
        self.browse = QPushButton("Folder…")
        self.browse.setToolTip("choose a model folder (your fine-tuned best/, a transformers "
                               "or CTranslate2 directory)")
        self.browse.clicked.connect(self.choose_folder)
        self.kind = QLabel()
        self.kind.setWordWrap(True)
        self.kind.setStyleSheet("color: palette(placeholder-text); font-size: 11px;")
        row = QHBoxLayout()
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.combo, 1)
        row.addWidget(self.browse)
        box = QVBoxLayout(self)
        box.setContentsMargins(0, 0, 0, 0)
        box.setSpacing(2)
        box.addLayout(row)
        box.addWidget(self.kind)
        self.combo.currentTextChanged.connect(self._on_text)

    def _add(self, spec: str) -> None:
        if self.combo.findText(spec) < 0:
            self.combo.addItem(spec)

    def spec(self) -> str:
        return self.combo.currentText().strip()

    def set_spec(self, spec: str) -> None:
        self._add(spec)
        self.combo.setCurrentText(spec)
        self._on_text(spec)

    def choose_folder(self) -> None:
        start = self.spec() if Path(self.spec()).is_dir() else str(Path.home())
        folder = QFileDialog.getExistingDirectory(self, "Choose a model folder", start)
        if folder:
            self.set_spec(folder)

    def _on_text(self, text: str) -> None:
        self.kind.setText(describe_model(text.strip()) if text.strip() else "")
        self.changed.emit(text.strip())
