"""Consecutive short clips joined into one training window of up to 30 s.

Why: Whisper's encoder always runs a padded 30 s window, so a 5 s clip pays for 30 s of
encoder work and trains the adapted encoder layers on 25 s of padding. Joining the clips that
follow each other in the manifest (in AISHELL-style corpora: the same article, read in one
session) gives the encoder layers real speech across the whole window, as in long-form
transcription, for about a fifth of the encoder passes. Window lengths are drawn at random
(seeded), so single clips padded as at inference stay in the mix.

The joined sample carries its parts in ``extra[PARTS]``; its ``sentences`` are the parts'
texts at their offsets, so ``--timestamps`` trains timestamped 30 s windows as Whisper's own
long-form decoding reads them.
"""

from __future__ import annotations

import random
from dataclasses import replace

from whispertune.data.manifest import Sample, Segment
from whispertune.languages import NO_SPACE_LANGUAGES, language_code

PARTS = "packed_parts"


def _segments(part: Sample, offset: float, duration: float) -> list[Segment]:
    if part.sentences:
        return [Segment(offset + s.start, offset + s.end, s.text) for s in part.sentences if s.text]
    return [Segment(offset, offset + duration, part.text.strip())]


def join(parts: list[Sample], durations: list[float]) -> Sample:
    """One sample whose audio is ``parts`` back to back."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    lang = first.language
    sep = "" if lang and language_code(lang) in NO_SPACE_LANGUAGES else " "
    segments: list[Segment] = []
    offset = 0.0
    for part, duration in zip(parts, durations, strict=True):
        segments += _segments(part, offset, duration)
        offset += duration
    return replace(
        first,
        sentence=sep.join(p.text.strip() for p in parts),
        sentences=segments,
        duration=offset,
        start_time=None,
        end_time=None,
        extra={**first.extra, PARTS: list(parts)},
    )


def pack_samples(
    samples: list[Sample],
    durations: list[float],
    label_lengths: list[int],
    max_seconds: float,
    max_label_tokens: int,
    seed: int,
) -> list[Sample]:
    """Join runs of consecutive speech clips of one language into windows.

    Each window's target length is drawn uniformly from (0, ``max_seconds``]; clips are added
    while the window stays within it (a clip longer than the target stands alone). No-speech
    clips stay single: their label is a different form.
    """
    rng = random.Random(f"pack:{seed}")
    out: list[Sample] = []
    parts: list[Sample] = []
    part_durations: list[float] = []
    tokens = 0
    target = rng.uniform(0, max_seconds)

    def flush() -> None:
        nonlocal parts, part_durations, tokens, target
        if parts:
            out.append(join(parts, part_durations))
        parts, part_durations, tokens = [], [], 0
        target = rng.uniform(0, max_seconds)

    for sample, duration, n in zip(samples, durations, label_lengths, strict=True):
        if sample.is_no_speech:
            flush()
            out.append(sample)
            continue
        fits = (
            parts
            and sample.language == parts[0].language
            and sum(part_durations) + duration <= target
            and tokens + n + 2 <= max_label_tokens  # + a pair of timestamps per part
        )
        if parts and not fits:
            flush()
        parts.append(sample)
        part_durations.append(duration)
        tokens += n + 2
    flush()
    return out
