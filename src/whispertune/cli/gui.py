"""CLI: ``whispertune gui`` -> the desktop app (whispertune.gui), in the ``gui`` extra."""

from __future__ import annotations

import argparse

from whispertune import options
from whispertune.cli._command import add_command, needs_extra
from whispertune.gui.options import GuiOptions


def register(sub: argparse._SubParsersAction) -> None:
    add_command(
        sub,
        "gui",
        GuiOptions,
        run,
        help="open the desktop app: transcribe files or the microphone, save subtitles",
        description="Open the desktop transcription app: choose a model (built-in, a "
        "transformers folder, a 'whispertune train' run's best/ folder, a CTranslate2 folder), "
        "queue audio/video files or record from the microphone, watch segments appear as "
        "they are decoded, correct the text, and save TXT, SRT, VTT or JSON. Needs the gui "
        "extra: pip install 'whispertune[gui]'.",
    )


def run(args: argparse.Namespace) -> int:
    opts = options.from_args(GuiOptions, args)
    with needs_extra("gui", "the desktop app"):
        import PySide6  # noqa: F401 - only to say what is missing before anything starts
    from whispertune.gui import main

    return main(opts)
