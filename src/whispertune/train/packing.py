"""Consecutive short clips joined into one training window of up to 30 s.

Why: Whisper's encoder always runs a padded 30 s window, so a 5 s clip pays for 30 s of
encoder work and trains the adapted encoder layers on 25 s of padding. Joining the clips that
follow each other in the manifest (in AISHELL-style corpora: the same article, read in one
session) gives the encoder layers real speech across the whole window, as in long-form
transcription, for about a fifth of the encoder passes. Window lengths are drawn at random
(seeded), so single clips padded as at inference stay in the mix.

The joined sample carries its parts in ``extra[PARTS]`` and the silences between them in
``extra[GAPS]``; its ``sentences`` are the parts' texts at their offsets, so ``--timestamps``
trains timestamped 30 s windows as Whisper's own long-form decoding reads them. The silences
(``--pack-pause``) are there because a continuous recording pauses between sentences, and
clips joined back to back never show the model such a pause inside a window.
"""

from __future__ import annotations

import random
from dataclasses import replace

from whispertune.data.manifest import Sample, Segment
from whispertune.languages import NO_SPACE_LANGUAGES, language_code

PARTS = "packed_parts"
GAPS = "packed_gaps"  # seconds of silence after each part but the last


def _segments(part: Sample, offset: float, duration: float) -> list[Segment]:
    if part.sentences:
        return [Segment(offset + s.start, offset + s.end, s.text) for s in part.sentences if s.text]
    return [Segment(offset, offset + duration, part.text.strip())]


def join(parts: list[Sample], durations: list[float], gaps: list[float] | None = None) -> Sample:
    """One sample whose audio is ``parts`` in order, ``gaps[i]`` seconds of silence after
    part ``i`` (back to back without ``gaps``)."""
    gaps = list(gaps) if gaps is not None else [0.0] * (len(parts) - 1)
    if len(gaps) != len(parts) - 1:
        raise ValueError(f"{len(parts)} parts need {len(parts) - 1} gaps, got {len(gaps)}")
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    lang = first.language
    sep = "" if lang and language_code(lang) in NO_SPACE_LANGUAGES else " "
    segments: list[Segment] = []
    offset = 0.0
    for part, duration, gap in zip(parts, durations, [*gaps, 0.0], strict=True):
        segments += _segments(part, offset, duration)
        offset += duration + gap
    return replace(
        first,
        sentence=sep.join(p.text.strip() for p in parts),
        sentences=segments,
        duration=offset,
        start_time=None,
        end_time=None,
        extra={**first.extra, PARTS: list(parts), GAPS: gaps},
    )


def pack_samples(
    samples: list[Sample],
    durations: list[float],
    label_lengths: list[int],
    max_seconds: float,
    max_label_tokens: int,
    seed: int,
    max_pause: float = 0.0,
) -> list[Sample]:
    """Join runs of consecutive speech clips of one language into windows.

    Each window's target length is drawn uniformly from (0, ``max_seconds``]; clips are added
    while the window, pauses included, stays within it (a clip longer than the target stands
    alone). Each pause is drawn uniformly from [0, ``max_pause``]. No-speech clips stay
    single: their label is a different form.
    """
    rng = random.Random(f"pack:{seed}")
    out: list[Sample] = []
    parts: list[Sample] = []
    part_durations: list[float] = []
    gaps: list[float] = []
    tokens = 0
    target = rng.uniform(0, max_seconds)

    def flush() -> None:
        nonlocal parts, part_durations, gaps, tokens, target
        if parts:
            out.append(join(parts, part_durations, gaps))
        parts, part_durations, gaps, tokens = [], [], [], 0
        target = rng.uniform(0, max_seconds)

    for sample, duration, n in zip(samples, durations, label_lengths, strict=True):
        if sample.is_no_speech:
            flush()
            out.append(sample)
            continue
        # no draw without pauses: the windows stay those of runs made before --pack-pause
        gap = rng.uniform(0, max_pause) if parts and max_pause > 0 else 0.0
        fits = (
            parts
            and sample.language == parts[0].language
            and sum(part_durations) + sum(gaps) + gap + duration <= target
            and tokens + n + 2 <= max_label_tokens  # + a pair of timestamps per part
        )
        if parts and not fits:
            flush()
        elif parts:
            gaps.append(gap)
        parts.append(sample)
        part_durations.append(duration)
        tokens += n + 2
    flush()
    return out
