"""The JSONL manifest: one speech sample a line, the single data format every command reads.

A line looks like::

    {"audio": {"path": "clips/a.wav", "start_time": 1.0, "end_time": 4.2},
     "sentence": "text", "language": "Chinese", "duration": 3.2,
     "sentences": [{"start": 0.0, "end": 1.5, "text": "te"},
                   {"start": 1.5, "end": 3.2, "text": "xt"}]}

Relative audio paths resolve against the manifest's folder, so a data set can be moved as a
whole. An empty ``sentence`` with no (or empty) ``sentences`` is a no-speech sample. The seed
project's format (``audio.path``, ``sentence``, ``language``, ``sentences``, ``duration``) is
read unchanged.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Container, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from whispertune.errors import UserError
from whispertune.staging import atomic_text_file


class ManifestError(UserError):
    """A manifest line that cannot be used; the message starts with ``file:line:``."""


@dataclass(frozen=True)
class Segment:
    """A timed piece of a transcript, in seconds relative to the sample's start."""

    start: float
    end: float
    text: str


@dataclass
class Sample:
    """One manifest line, with its audio path made absolute."""

    audio_path: Path
    sentence: str = ""
    language: str | None = None
    duration: float | None = None
    start_time: float | None = None
    end_time: float | None = None
    sentences: list[Segment] = field(default_factory=list)
    line: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_no_speech(self) -> bool:
        return not self.sentence.strip() and not any(s.text.strip() for s in self.sentences)

    @property
    def text(self) -> str:
        """The reference transcript: ``sentence``, else the ``sentences`` joined."""
        if self.sentence.strip() or not self.sentences:
            return self.sentence
        return "".join(s.text for s in self.sentences)

    def to_json(self, relative_to: Path | None = None) -> dict[str, Any]:
        """The manifest line for this sample, paths relative to ``relative_to`` where possible."""
        path = self.audio_path
        if relative_to is not None:
            try:
                path = Path(os.path.relpath(path, relative_to))
            except ValueError:  # another drive on Windows
                pass
        audio: dict[str, Any] = {"path": path.as_posix()}
        if self.start_time is not None:
            audio["start_time"] = self.start_time
        if self.end_time is not None:
            audio["end_time"] = self.end_time
        out: dict[str, Any] = {"audio": audio, "sentence": self.sentence}
        if self.language is not None:
            out["language"] = self.language
        if self.sentences:
            out["sentences"] = [
                {"start": s.start, "end": s.end, "text": s.text} for s in self.sentences
            ]
        if self.duration is not None:
            out["duration"] = self.duration
        out.update(self.extra)
        return out


_KNOWN_KEYS = {"audio", "sentence", "language", "sentences", "duration"}


def parse_line(obj: Any, base_dir: Path, where: str, line: int = 0) -> Sample:
    """Turn one decoded JSON object into a Sample, or raise ManifestError naming ``where``."""
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    audio = obj.get("audio")
    if isinstance(audio, str):  # tolerate {"audio": "path"}
        audio = {"path": audio}
    if not isinstance(audio, dict) or not isinstance(audio.get("path"), str) or not audio["path"]:
        raise ManifestError(f'{where}: missing "audio": {{"path": ...}}')
    sentence = obj.get("sentence", "")
    if sentence is None:
        sentence = ""
    if not isinstance(sentence, str):
        raise ManifestError(f'{where}: "sentence" must be a string')
    language = obj.get("language")
    if language is not None and not isinstance(language, str):
        raise ManifestError(f'{where}: "language" must be a string such as "Chinese" or "en"')

    def number(value: Any, name: str) -> float | None:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ManifestError(f'{where}: "{name}" must be a number of seconds, got {value!r}')
        if not math.isfinite(value):
            raise ManifestError(f'{where}: "{name}" must be a finite number of seconds: {value}')
        return float(value)

    unknown = sorted(k for k in obj if k not in _KNOWN_KEYS)
    if unknown and "sentence" not in obj and not obj.get("sentences"):
        # Read as it stands, such a line is a no-speech sample: a manifest from another tool
        # ("text", "transcript") would train the model to write nothing.
        raise ManifestError(
            f'{where}: no "sentence" (the transcript), but {", ".join(map(repr, unknown))}: '
            'name the transcript "sentence" (a no-speech sample says "sentence": "")'
        )

    segments = []
    raw_sentences = obj.get("sentences") or []
    if not isinstance(raw_sentences, list):
        raise ManifestError(f'{where}: "sentences" must be a list of {{start, end, text}}')
    for i, seg in enumerate(raw_sentences):
        if not isinstance(seg, dict) or not {"start", "end", "text"} <= set(seg):
            raise ManifestError(f'{where}: sentences[{i}] needs "start", "end" and "text"')
        if not isinstance(seg["text"], str):
            raise ManifestError(f"{where}: sentences[{i}].text must be a string")
        segments.append(
            Segment(
                number(seg["start"], f"sentences[{i}].start"),  # type: ignore[arg-type]
                number(seg["end"], f"sentences[{i}].end"),  # type: ignore[arg-type]
                seg["text"],
            )
        )
    path = Path(audio["path"]).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    return Sample(
        audio_path=path,
        sentence=sentence,
        language=language,
        duration=number(obj.get("duration"), "duration"),
        start_time=number(audio.get("start_time"), "audio.start_time"),
        end_time=number(audio.get("end_time"), "audio.end_time"),
        sentences=segments,
        line=line,
        extra={k: v for k, v in obj.items() if k not in _KNOWN_KEYS},
    )


def iter_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, text) of each non-blank line, 1-based, with a clear error for bad UTF-8."""
    with open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ManifestError(f"{path}:{number}: not UTF-8 text ({e.reason})") from e
            if text.strip():
                yield number, text


def read_manifest(path: str | Path) -> list[Sample]:
    """All samples of a manifest; the first bad line raises ManifestError with ``file:line``.

    Use :func:`whispertune.data.validate.validate_manifest` to collect every problem at once.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    base = path.resolve().parent
    samples = []
    for number, text in iter_lines(path):
        where = f"{path}:{number}"
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise ManifestError(f"{where}: invalid JSON ({e.msg} at column {e.colno})") from e
        samples.append(parse_line(obj, base, where, number))
    return samples


def write_manifest(
    samples: list[Sample],
    path: str | Path,
    *,
    force: bool = False,
    keep_absolute: Container[Path] = (),
) -> Path:
    """Write samples to ``path`` atomically; audio paths become relative to its folder, but
    those in ``keep_absolute`` (paths the user wrote absolute) stay as they are."""
    path = Path(path)
    if path.exists() and not force:
        raise UserError(f"{path}: already exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.resolve().parent
    with atomic_text_file(path) as fh:
        for s in samples:
            relative_to = None if s.audio_path in keep_absolute else base
            fh.write(json.dumps(s.to_json(relative_to=relative_to), ensure_ascii=False) + "\n")
    return path
