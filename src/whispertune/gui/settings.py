"""What the window remembers between runs, kept in QSettings (the platform's own place: an
ini file on Linux, the registry on Windows, a plist on macOS).

One typed record instead of ``settings.value(...)`` calls spread over the window: QSettings
returns strings from ini files ("true", "5"), so every value is converted here, once, and a
damaged or old settings file falls back to the defaults instead of breaking the app.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from PySide6.QtCore import QSettings

from whispertune.backends.base import DecodeOptions
from whispertune.backends.options import BACKENDS
from whispertune.models.sources import DEFAULT_MODEL

ORGANIZATION = "whispertune"
APPLICATION = "whispertune-gui"
MAX_RECENT_MODELS = 8


@dataclass
class AppSettings:
    """The window's choices; defaults are the library's (DecodeOptions, ModelOptions)."""

    model: str = DEFAULT_MODEL
    backend: str = BACKENDS[0]
    language: str = "auto"  # "auto" or a Whisper language code
    task: str = "transcribe"
    beam_size: int = DecodeOptions().beam_size
    vad: bool = True
    last_dir: str = ""
    recent_models: list[str] = field(default_factory=list)

    def remember_model(self, spec: str) -> None:
        """Put a model first in the recent list (local folders the user chose)."""
        self.recent_models = [spec, *[m for m in self.recent_models if m != spec]][
            :MAX_RECENT_MODELS
        ]


def open_settings() -> QSettings:
    """The user's settings store."""
    return QSettings(ORGANIZATION, APPLICATION)


def _to_bool(value: object) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes")
    return bool(value)


def load_settings(store: QSettings) -> AppSettings:
    """Read the remembered settings; a missing or unreadable value keeps its default."""
    result = AppSettings()
    for f in fields(AppSettings):
        if not store.contains(f.name):
            continue
        raw = store.value(f.name)
        default = getattr(result, f.name)
        try:
            if isinstance(default, bool):
                value: object = _to_bool(raw)
            elif isinstance(default, int):
                value = int(raw)  # type: ignore[arg-type]
            elif isinstance(default, list):
                value = [str(v) for v in (raw if isinstance(raw, list) else [raw]) if v]
            else:
                value = str(raw)
        except (TypeError, ValueError):
            continue
        setattr(result, f.name, value)
    if result.backend not in BACKENDS:
        result.backend = BACKENDS[0]
    if result.task not in ("transcribe", "translate"):
        result.task = "transcribe"
    result.beam_size = min(max(result.beam_size, 1), 20)
    return result


def save_settings(store: QSettings, settings: AppSettings) -> None:
    for f in fields(AppSettings):
        store.setValue(f.name, getattr(settings, f.name))
    store.sync()
