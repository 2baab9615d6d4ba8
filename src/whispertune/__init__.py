"""whispertune: OpenAI Whisper from a checkpoint to a fine-tuned, evaluated, deployed recogniser.

The library API is :mod:`whispertune.api` (``from whispertune import api``). Its model and
option types are importable from here too (``whispertune.load_model``, ``whispertune.Model``,
...), loaded on first use so that ``import whispertune`` (and the CLI's ``--help``) stays light.
Its ``train``, ``merge`` and ``export`` functions are not: those names are the subpackages
``whispertune.train``, ``whispertune.merge`` and ``whispertune.export``; call ``api.train``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_API = {
    "load_model": "whispertune.api",
    "Model": "whispertune.api",
    "Transcription": "whispertune.api",
    "ProgressEvent": "whispertune.progress",
    "ProgressCallback": "whispertune.progress",
    "Cancelled": "whispertune.progress",
    "UserError": "whispertune.errors",
    "ModelOptions": "whispertune.backends.options",
    "DecodeOptions": "whispertune.backends.base",
    "LongFormOptions": "whispertune.transcribe",
    "EvaluateOptions": "whispertune.evaluate",
    "EvaluationReport": "whispertune.evaluate",
    "TrainOptions": "whispertune.train.config",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'whispertune' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
