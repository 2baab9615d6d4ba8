"""Transcript writers: plain text, SubRip (srt), WebVTT (vtt), JSON and TSV.

The layouts follow openai-whisper's writers, so files drop into the same subtitle tools and
scripts: srt/vtt cues are the segments, TSV has integer milliseconds (start, end, text), JSON
has the full text, the language with its probability and every segment (words included when
they were asked for). Files are written to a temporary name and renamed, so a reader never sees
half a file.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Protocol

FORMATS = ("txt", "srt", "vtt", "json", "tsv")


class _Segment(Protocol):
    start: float
    end: float
    text: str


def format_timestamp(seconds: float, always_include_hours: bool = True, marker: str = ".") -> str:
    """``HH:MM:SS.mmm`` (srt uses ``,`` as the marker; vtt may leave the hours out)."""
    ms = max(0, int(round(seconds * 1000)))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    head = f"{hours:02d}:" if always_include_hours or hours else ""
    return f"{head}{minutes:02d}:{secs:02d}{marker}{ms:03d}"


def _clean(text: str) -> str:
    # A cue's text must not contain a blank line (it would end the cue) or "-->".
    return " ".join(text.split()).replace("-->", "->")


def to_txt(segments: Iterable[_Segment]) -> str:
    """One segment per line."""
    return "".join(f"{_clean(s.text)}\n" for s in segments if s.text.strip())


def _cues(
    segments: Iterable[_Segment], always_include_hours: bool, marker: str
) -> Iterator[tuple[str, str, str]]:
    """(start, end, text) of each subtitle cue: the segments with text, an end never before
    its start. srt and vtt differ only in how they write the times and number the cues."""
    for s in segments:
        if s.text.strip():
            start = format_timestamp(s.start, always_include_hours, marker)
            end = format_timestamp(max(s.end, s.start), always_include_hours, marker)
            yield start, end, _clean(s.text)


def to_srt(segments: Iterable[_Segment]) -> str:
    cues = _cues(segments, True, ",")
    return "\n".join(
        f"{i}\n{start} --> {end}\n{text}\n" for i, (start, end, text) in enumerate(cues, start=1)
    )


def to_vtt(segments: Iterable[_Segment]) -> str:
    cues = _cues(segments, False, ".")
    return "\n".join(["WEBVTT\n", *(f"{start} --> {end}\n{text}\n" for start, end, text in cues)])


def to_tsv(segments: Iterable[_Segment]) -> str:
    """openai-whisper's TSV: integer milliseconds, so no locale or float parsing issues."""
    rows = ["start\tend\ttext"]
    for s in segments:
        if s.text.strip():
            text = _clean(s.text).replace("\t", " ")
            rows.append(f"{int(round(s.start * 1000))}\t{int(round(s.end * 1000))}\t{text}")
    return "\n".join(rows) + "\n"


def to_json(result) -> str:
    """The whole result: text, info (language, probability, duration...) and segments."""
    data = result.to_dict() if hasattr(result, "to_dict") else asdict(result)
    return json.dumps(data, ensure_ascii=False, indent=2) + "\n"


def render(result, fmt: str) -> str:
    segments = result.segments
    if fmt == "txt":
        return to_txt(segments)
    if fmt == "srt":
        return to_srt(segments)
    if fmt == "vtt":
        return to_vtt(segments)
    if fmt == "tsv":
        return to_tsv(segments)
    if fmt == "json":
        return to_json(result)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _atomic_write(path: Path, text: str) -> None:
    from whispertune.staging import atomic_text_file

    with atomic_text_file(path) as fh:
        fh.write(text)


def write_outputs(result, output_dir: Path, stem: str, formats: Iterable[str]) -> list[Path]:
    """Write ``<output_dir>/<stem>.<fmt>`` for each format; returns the paths written."""
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = output_dir / f"{stem}.{fmt}"
        _atomic_write(path, render(result, fmt))
        written.append(path)
    return written


def output_stems(paths: Iterable[Path]) -> list[str]:
    """Output names for input files: the file stem, made unique (``talk``, ``talk-2``) when two
    inputs from different folders share a name, so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for p in paths:
        stem = Path(p).stem or "audio"
        n = seen.get(stem, 0) + 1
        seen[stem] = n
        stems.append(stem if n == 1 else f"{stem}-{n}")
    return stems
