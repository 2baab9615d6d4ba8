"""The desktop transcription app (``whispertune gui``): a Qt window over the library API.

Everything it decodes goes through :func:`whispertune.api.load_model` and
``Model.transcribe`` (streamed segments, ProgressEvent, a cancel event), so the window shows
exactly what ``whispertune transcribe`` writes for the same settings, for any model the
library loads: built-in weights, a transformers directory, a ``whispertune train`` run's
``best/`` adapter, a CTranslate2 directory.

Importing this package loads no Qt: ``whispertune --help`` must work where the ``gui`` extra
(PySide6, sounddevice) is not installed; :func:`main` imports the window when it runs.
"""

from __future__ import annotations

from whispertune.gui.options import GuiOptions

__all__ = ["GuiOptions", "main"]


def main(options: GuiOptions | None = None) -> int:
    """Open the window (and block until it closes); returns the exit status."""
    from whispertune.gui.app import run

    return run(options or GuiOptions())
