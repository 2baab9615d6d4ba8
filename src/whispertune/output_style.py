"""The writing conventions of a model's training transcripts, kept with the model and applied
to what it decodes.

Why: a corpus has conventions the base model does not share — AISHELL writes numbers as read
(``四千万``), Whisper writes ``4000万``. Learning such a convention means adapting the
decoder's language model, which on small data costs vocabulary (measured: the decoder adapter
that learned the numerals added twice as many homophone errors as it removed). So
``whispertune train`` records the convention it finds in the training manifest
(``output_style.json`` beside the weights, carried by ``merge`` and ``export``), and every
backend rewrites its output to it: the convention for free, the language model untouched.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from whispertune.errors import UserError
from whispertune.numerals import arabic_to_hanzi, numeral_style

logger = logging.getLogger(__name__)

STYLE_FILE = "output_style.json"
NUMERAL_CHOICES = ("auto", "hanzi", "keep")


@dataclass
class OutputStyle:
    """``numerals``: ``"hanzi"`` = Mandarin numbers written in characters, as read; None =
    as the model decodes them."""

    numerals: str | None = None

    def is_plain(self) -> bool:
        return self.numerals is None


def style_of_manifest(sentences_by_language: Iterable[tuple[str | None, str]]) -> OutputStyle:
    """The conventions of (language code, transcript) pairs; only Mandarin ones have rules."""
    chinese = [text for lang, text in sentences_by_language if lang == "zh"]
    return OutputStyle(numerals=numeral_style(chinese))


def write_style(directory: Path, style: OutputStyle) -> None:
    if style.is_plain():
        return
    (Path(directory) / STYLE_FILE).write_text(json.dumps(asdict(style), indent=1), "utf-8")


def read_style(directory: Path) -> OutputStyle:
    """The style recorded in a model directory, plain when there is none (base models)."""
    path = Path(directory) / STYLE_FILE
    if not path.is_file():
        return OutputStyle()
    try:
        data = json.loads(path.read_text("utf-8"))
        return OutputStyle(numerals=data.get("numerals"))
    except (ValueError, AttributeError) as e:
        logger.warning("%s: unreadable (%s); output is left as decoded", path, e)
        return OutputStyle()


def copy_style(source_dir: Path, target_dir: Path) -> None:
    """Carry a model's style to a merged or exported copy of it."""
    write_style(target_dir, read_style(source_dir))


def resolve_style(recorded: OutputStyle, numerals: str) -> OutputStyle:
    """What a decode applies: the ``--numerals`` choice, ``auto`` meaning the recorded one."""
    if numerals not in NUMERAL_CHOICES:
        raise UserError(f"unknown --numerals {numerals!r}; use one of {', '.join(NUMERAL_CHOICES)}")
    if numerals == "auto":
        return recorded
    return OutputStyle(numerals="hanzi" if numerals == "hanzi" else None)


def apply_style(text: str, language: str | None, style: OutputStyle) -> str:
    if style.numerals == "hanzi" and language == "zh":
        return arabic_to_hanzi(text)
    return text


def style_transcripts(transcripts: Sequence, style: OutputStyle) -> list:
    """Rewrite decoded transcripts (and their segments) in place to ``style``."""
    if style.is_plain():
        return list(transcripts)
    for t in transcripts:
        t.text = apply_style(t.text, t.language, style)
        for seg in t.segments:
            seg.text = apply_style(seg.text, t.language, style)
    return list(transcripts)
