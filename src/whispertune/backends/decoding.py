"""The decoding rules both backends share, in small parts (as openai-whisper's decoding.py):
which language each clip is decoded in, the hallucination guards (temperature fallback on
repetitive or improbable output, the no-speech skip) and the parsing of Whisper's timestamp
tokens into segments.

Why shared and not left to each backend: these decide *what* text is kept, so both backends
behave the same on silence, on loops and on long audio. The interface they implement is in
``base``; this module holds no state and is safe from any thread.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from whispertune.audio import SAMPLE_RATE
from whispertune.backends.base import CHUNK_SECONDS, ClipSegment, DecodeOptions
from whispertune.errors import UserError

TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_TARGET_TOKENS = 448  # decoder context: prompt + generated tokens


def clip_languages(
    options: DecodeOptions, languages: Sequence[str | None] | None, n: int
) -> list[str | None]:
    """The language code of each of ``n`` clips: its own from ``languages``, else
    ``options.language``, else None (to be detected). Shared by the backends so that an
    unknown language fails the same way, before any audio is processed."""
    # imported here: whispertune.languages loads transformers' tables, which importing the
    # backend interface alone (options, --help) should not pay for
    from whispertune.languages import language_code

    default_lang = language_code(options.language) if options.language else None
    return [language_code(lang) if lang else default_lang for lang in (languages or [None] * n)]


def detect_missing_languages(
    langs: list[str | None],
    multilingual: bool,
    detect: Callable[[], Sequence[tuple[str, float]]],
) -> tuple[list[str | None], list[float | None]]:
    """Languages filled in where ``clip_languages`` left None, with their probabilities.

    An English-only model is English throughout. Otherwise ``detect`` (the backend's own
    detection, most probable (code, probability) per clip of the batch) runs only when some
    clip has no language, since it costs a decoder pass; given languages keep probability None.
    """
    n = len(langs)
    probs: list[float | None] = [None] * n
    if not multilingual:
        return ["en"] * n, probs
    langs = list(langs)
    if any(lang is None for lang in langs):
        for i, (lang, prob) in enumerate(detect()):
            if langs[i] is None:
                langs[i], probs[i] = lang, prob
    return langs, probs


def clip_duration(audio: np.ndarray) -> float:
    """Seconds of a clip as decoded: anything past Whisper's 30 s window is not seen, so
    segment times and ``consumed`` are capped there by every backend."""
    return min(len(audio) / SAMPLE_RATE, CHUNK_SECONDS)


def compression_ratio(text: str) -> float:
    """gzip ratio of the text: Whisper's repetition-loop detector (loops compress well)."""
    data = text.encode("utf-8")
    if not data:
        return 0.0
    return len(data) / len(zlib.compress(data))


def needs_fallback(
    options: DecodeOptions, ratio: float, avg_logprob: float, no_speech_prob: float | None
) -> bool:
    """Whisper's rule: decode again hotter if the text loops or is improbable — unless the
    window is silence anyway (then a hotter decode would only invent more)."""
    bad = False
    if (
        options.compression_ratio_threshold is not None
        and ratio > options.compression_ratio_threshold
    ):
        bad = True
    if options.log_prob_threshold is not None and avg_logprob < options.log_prob_threshold:
        bad = True
    if is_silence(options, avg_logprob, no_speech_prob):
        bad = False
    return bad


def is_silence(options: DecodeOptions, avg_logprob: float, no_speech_prob: float | None) -> bool:
    """No-speech guard: the model says "no speech" and its text is improbable."""
    if options.no_speech_threshold is None or no_speech_prob is None:
        return False
    if no_speech_prob <= options.no_speech_threshold:
        return False
    if options.log_prob_threshold is not None and avg_logprob > options.log_prob_threshold:
        return False  # confident text despite the no-speech token: keep it
    return True


def split_timestamped(
    tokens: Sequence[int],
    timestamp_begin: int,
    eot: int,
    duration: float,
    decode,
) -> tuple[list[ClipSegment], float]:
    """Segments from a token sequence with Whisper timestamp tokens, and the seconds consumed.

    Whisper writes ``<|t0|> text <|t1|><|t1'|> text <|t2|>``: each pair of adjacent timestamps
    closes one segment and opens the next. Output that ends with a single timestamp (or none)
    after text means the window's speech ended; output that ends on a pair means the last
    sentence runs past the window, so only up to that last timestamp is final (``consumed``).
    The unfinished tail is still returned, as a last segment with ``final=False`` ending at
    ``duration``: a long-form loop that moves its window to ``consumed`` drops it and decodes
    it again; a caller whose windows are not decoded again (VAD chunks) keeps it.
    ``decode`` turns text token ids into a string.
    """
    tokens = [t for t in tokens if t != eot]
    segments: list[ClipSegment] = []

    def stamp(t: int) -> float:
        return min(duration, (t - timestamp_begin) * TIME_PRECISION)

    def add(piece: list[int], start: float, end: float, final: bool = True) -> None:
        text_ids = [t for t in piece if t < eot]
        if text_ids:
            segments.append(
                ClipSegment(start, max(start, end), decode(text_ids), text_ids, final=final)
            )

    is_ts = [t >= timestamp_begin for t in tokens]
    single_ending = len(tokens) >= 2 and not is_ts[-2] and is_ts[-1]
    pairs = [i for i in range(1, len(tokens)) if is_ts[i] and is_ts[i - 1]]
    if pairs:
        cuts = pairs + ([len(tokens)] if single_ending else [])
        last = 0
        for cut in cuts:
            piece = tokens[last:cut]
            add(piece, stamp(piece[0]), stamp(piece[-1]))
            last = cut
        consumed = duration if single_ending else stamp(tokens[last - 1])
        if not single_ending:
            add(tokens[last:], consumed, duration, final=False)
        if consumed <= 0:  # a stuck window: never seek backwards or stand still
            consumed = duration
    else:
        stamps = [t for t in tokens if t >= timestamp_begin]
        start = stamp(stamps[0]) if stamps else 0.0
        end = duration
        if len(stamps) >= 2 and stamps[-1] != timestamp_begin:
            end = stamp(stamps[-1])
        add(tokens, start, end)
        consumed = duration
    return [s for s in segments if s.text.strip()], consumed


def avg_logprob_from_score(score: float, length: int, length_penalty: float = 1.0) -> float:
    """Average log-probability per token (end token included) from a length-normalized score,
    as Whisper computes it for the log-prob guard."""
    cum = score * (length**length_penalty)
    return cum / (length + 1)


def finite_or_none(value: float | None) -> float | None:
    """Guards given as 'inf'/'-inf' on the command line mean "off"."""
    if value is None or math.isinf(value):
        return None
    return value


def normalized_guards(options: DecodeOptions) -> DecodeOptions:
    """A copy of ``options`` with infinite thresholds turned into None (off)."""
    temps = [float(t) for t in (options.temperatures or [0.0])]
    if any(t < 0 for t in temps):
        raise UserError(f"temperatures must be >= 0, got {temps}")
    if options.beam_size < 1:
        raise UserError(f"beam size must be at least 1, got {options.beam_size}")
    if options.best_of < 1:
        raise UserError(f"best-of must be at least 1, got {options.best_of}")
    return replace(
        options,
        temperatures=temps,
        compression_ratio_threshold=finite_or_none(options.compression_ratio_threshold),
        log_prob_threshold=finite_or_none(options.log_prob_threshold),
        no_speech_threshold=finite_or_none(options.no_speech_threshold),
    )
