"""What is in a manifest: hours, clip lengths, languages, text lengths, timestamps.

Answers the questions asked before a fine-tuning run: is there enough audio, are clips within
Whisper's 30 s window (the histogram), are transcripts far from the 448-token decoder limit, how
many no-speech samples and timestamped samples are there. Durations come from the manifest's
``duration`` field when present (free), else from the audio header.
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from whispertune.audio import AudioError
from whispertune.data.convert import normalize_language
from whispertune.data.manifest import read_manifest
from whispertune.data.validate import (
    decoder_tokens,
    load_tokenizer,
    measure_duration,
    sample_span,
    tokenizer_json_field,
)
from whispertune.languages import UnknownLanguageError

logger = logging.getLogger(__name__)

# Histogram buckets in seconds: [low, high); the last one is everything over Whisper's 30 s.
BUCKETS: tuple[tuple[str, float, float], ...] = (
    ("0-5 s", 0.0, 5.0),
    ("5-10 s", 5.0, 10.0),
    ("10-20 s", 10.0, 20.0),
    ("20-30 s", 20.0, 30.0),
    (">30 s", 30.0, float("inf")),
)


@dataclass
class StatsOptions:
    """Options of ``whispertune data stats``."""

    manifest: Path = field(metadata={"positional": True, "help": "the JSONL manifest to describe"})
    json: bool = field(
        default=False, metadata={"help": "print a machine-readable JSON object instead of text"}
    )
    tokens: bool = field(
        default=True,
        metadata={
            "help": "count decoder tokens per clip with a Whisper tokenizer; --no-tokens skips "
            "loading it"
        },
    )
    tokenizer_json: Path | None = tokenizer_json_field()


@dataclass
class Summary:
    """min/mean/max of a quantity over the clips (all 0 when there are none)."""

    min: float = 0.0
    mean: float = 0.0
    max: float = 0.0

    @classmethod
    def of(cls, values: list[float]) -> Summary:
        if not values:
            return cls()
        return cls(min(values), statistics.fmean(values), max(values))


@dataclass
class ManifestStats:
    """Figures of one manifest; ``to_dict`` is what ``--json`` prints."""

    manifest: str
    clips: int = 0
    total_seconds: float = 0.0
    duration: Summary = field(default_factory=Summary)
    # Label -> clip count, in BUCKETS order.
    histogram: dict[str, int] = field(default_factory=dict)
    languages: dict[str, int] = field(default_factory=dict)
    chars_per_clip: Summary = field(default_factory=Summary)
    # Decoder tokens per clip including the special tokens; None when no tokenizer was used.
    tokens_per_clip: Summary | None = None
    no_speech: int = 0
    with_timestamps: int = 0
    # Seconds of audio in the timestamped samples, and how much of it their segments cover.
    timestamped_seconds: float = 0.0
    timestamp_coverage: float = 0.0
    # Durations measured from the audio because the manifest had none; clips whose audio could
    # not be measured are left out of the duration figures.
    measured: int = 0
    unmeasurable: int = 0

    @property
    def total_hours(self) -> float:
        return self.total_seconds / 3600

    @property
    def total_minutes(self) -> float:
        return self.total_seconds / 60

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["total_hours"] = round(self.total_hours, 4)
        out["total_minutes"] = round(self.total_minutes, 2)
        return out


def _language_label(language: str | None) -> str:
    """One label per language, so that "zh", "chinese" and "Chinese" are counted together."""
    if not language:
        return "(none)"
    try:
        return normalize_language(language)
    except UnknownLanguageError:
        return language


def manifest_stats(
    path: str | Path,
    tokens: bool = True,
    tokenizer_json: Path | None = None,
) -> ManifestStats:
    """Compute :class:`ManifestStats`; a malformed line raises ManifestError with file:line."""
    path = Path(path)
    samples = read_manifest(path)
    tokenizer = load_tokenizer(tokenizer_json) if tokens else None
    stats = ManifestStats(manifest=str(path), clips=len(samples))
    durations: list[float] = []
    chars: list[float] = []
    token_counts: list[float] = []
    covered = 0.0
    for sample in tqdm(samples, desc="reading", unit="clip", disable=None, leave=False):
        duration = sample.duration
        if duration is None:
            try:
                duration = sample_span(sample, measure_duration(sample.audio_path))
                stats.measured += 1
            except AudioError as e:
                logger.warning("%s:%d: %s: %s", path, sample.line, e, sample.audio_path)
                stats.unmeasurable += 1
        if duration is not None:
            durations.append(duration)
        language = _language_label(sample.language)
        stats.languages[language] = stats.languages.get(language, 0) + 1
        chars.append(len(sample.text))
        if tokenizer is not None:
            token_counts.append(decoder_tokens(tokenizer, sample))
        if sample.is_no_speech:
            stats.no_speech += 1
        if sample.sentences:
            stats.with_timestamps += 1
            if duration is not None:
                stats.timestamped_seconds += duration
                covered += sum(max(0.0, s.end - s.start) for s in sample.sentences)
    stats.total_seconds = sum(durations)
    stats.duration = Summary.of(durations)
    stats.histogram = {label: 0 for label, _, _ in BUCKETS}
    for d in durations:
        for label, low, high in BUCKETS:
            # 30 s exactly still fits Whisper's window, so it belongs to 20-30.
            if low <= d < high or (high == 30.0 and d == 30.0):
                stats.histogram[label] += 1
                break
    stats.languages = dict(sorted(stats.languages.items(), key=lambda kv: (-kv[1], kv[0])))
    stats.chars_per_clip = Summary.of(chars)
    if tokenizer is not None:
        stats.tokens_per_clip = Summary.of(token_counts)
    if stats.timestamped_seconds > 0:
        stats.timestamp_coverage = min(1.0, covered / stats.timestamped_seconds)
    return stats


def _bar(count: int, largest: int, width: int = 40) -> str:
    if not count:
        return ""
    return "#" * max(1, round(width * count / largest))


def format_stats(stats: ManifestStats) -> str:
    """The human-readable report ``whispertune data stats`` prints."""

    def summary(s: Summary, unit: str, digits: int = 0) -> str:
        low, mean, high = (
            f"{s.min:.{digits}f}",
            f"{s.mean:.{max(digits, 1)}f}",
            f"{s.max:.{digits}f}",
        )
        return f"min {low}{unit}  mean {mean}{unit}  max {high}{unit}"

    lines = [
        f"manifest:    {stats.manifest}",
        f"clips:       {stats.clips}",
        f"total:       {stats.total_hours:.2f} h ({stats.total_minutes:.1f} min)",
        f"duration:    {summary(stats.duration, ' s', 2)}",
    ]
    if stats.measured or stats.unmeasurable:
        lines.append(
            f"             ({stats.measured} measured from audio, "
            f"{stats.unmeasurable} unreadable and left out)"
        )
    lines.append("histogram:")
    largest = max(stats.histogram.values(), default=0)
    for label, count in stats.histogram.items():
        lines.append(f"  {label:>8} {count:6d} {_bar(count, largest)}".rstrip())
    lines.append("languages:   " + ", ".join(f"{k} {v}" for k, v in stats.languages.items()))
    lines.append(f"chars/clip:  {summary(stats.chars_per_clip, '')}")
    if stats.tokens_per_clip is not None:
        lines.append(f"tokens/clip: {summary(stats.tokens_per_clip, '')} (with special tokens)")
    lines.append(f"no-speech:   {stats.no_speech}")
    ts = f"timestamps:  {stats.with_timestamps} clip{'' if stats.with_timestamps == 1 else 's'}"
    if stats.with_timestamps:
        ts += (
            f" ({stats.timestamped_seconds / 60:.1f} min of audio, "
            f"{100 * stats.timestamp_coverage:.1f}% covered by segments)"
        )
    lines.append(ts)
    return "\n".join(lines)
