"""Options of ``whispertune gui``: what the command line may preset in the window.

A dataclass like every command's, so ``--help`` is generated from it; it imports no Qt.
Anything not given here comes from the settings the app remembered from its last run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from whispertune.backends.options import BACKENDS


@dataclass
class GuiOptions:
    """Options of ``whispertune gui``."""

    files: list[Path] = field(
        default_factory=list,
        metadata={
            "positional": True,
            "nargs": "*",
            "help": "audio or video files to put in the queue",
        },
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "model to select: builtin:base, builtin:tiny.en, a transformers directory, "
            "a 'whispertune train' run's best/ adapter or a CTranslate2 directory (default: "
            "the one used last, else builtin:base)"
        },
    )
    backend: str | None = field(
        default=None,
        metadata={"help": "inference runtime (default: the one used last, else ct2)",
                  "choices": list(BACKENDS)},
    )
