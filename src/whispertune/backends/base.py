"""The one interface every backend implements, so evaluation, transcription, the server and the
UIs never care which runtime decodes.

What is shared here, and not left to each backend, is everything that decides *what* text is
kept: the hallucination guards (temperature fallback on repetitive or improbable output, the
no-speech skip) and the parsing of Whisper's timestamp tokens into segments. Both backends then
behave the same on silence, on loops and on long audio.
"""

from __future__ import annotations

import math
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from whispertune.audio import SAMPLE_RATE
from whispertune.errors import UserError
from whispertune.output_style import (
    NUMERAL_CHOICES,
    OutputStyle,
    resolve_style,
    style_transcripts,
)

CHUNK_SECONDS = 30.0  # Whisper's fixed encoder window
TIME_PRECISION = 0.02  # seconds per timestamp token
MAX_TARGET_TOKENS = 448  # decoder context: prompt + generated tokens

# OpenAI's and faster-whisper's schedule: greedy/beam first, then sampling at rising
# temperatures for the windows whose output looks like a loop or is improbable.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


@dataclass
class DecodeOptions:
    """How to decode: the same options for every backend.

    The guard defaults (compression ratio 2.4, log-prob -1.0, no-speech 0.6, temperatures
    0.0..1.0) are Whisper's own; they were kept after measuring them against looser and
    stricter values on long-form speech and on generated silence and noise (the numbers are in
    ``whispertune transcribe --help``): on speech they never fired, on silence and noise they
    turn Mandarin repetition loops into empty output; a stricter no-speech threshold would drop
    real Mandarin windows, whose no-speech probability reaches 0.93.
    """

    language: str | None = field(
        default=None,
        metadata={
            "help": "language code or name (zh, Chinese, en, ...) or 'auto'; default: the "
            "manifest's per-sample language when evaluating, else detected from the audio"
        },
    )
    task: str = field(
        default="transcribe",
        metadata={
            "help": "transcribe, or translate to English",
            "choices": ["transcribe", "translate"],
        },
    )
    beam_size: int = field(default=5, metadata={"help": "beam width (1 = greedy)"})
    batch_size: int = field(
        default=4,
        metadata={
            "help": "30 s windows (clips or speech spans) decoded together; on CPU larger "
            "batches measured no faster (the encoder's fixed 30 s window dominates) and each "
            "window adds ~90 MB of beam-search cache at beam 5; raise it on a GPU"
        },
    )
    max_new_tokens: int | None = field(
        default=None,
        metadata={
            "help": "longest output per 30 s window, in tokens (default: what the model's "
            "448-token context leaves after the prompt)"
        },
    )
    initial_prompt: str | None = field(
        default=None,
        metadata={
            "help": "text given to every window as previous context (spellings, names, style)"
        },
    )
    temperatures: list[float] = field(
        default_factory=lambda: list(DEFAULT_TEMPERATURES),
        metadata={
            "help": "temperature fallback: decode at the first value; a window whose output "
            "fails the compression-ratio or log-prob check is decoded again by sampling at "
            "the next (pass a single 0 to switch fallback off)",
            "flag": "--temperature",
            "nargs": "+",
        },
    )
    best_of: int = field(
        default=5, metadata={"help": "candidates sampled per window at temperature > 0"}
    )
    compression_ratio_threshold: float | None = field(
        default=2.4,
        metadata={
            "help": "gzip compression ratio above which output counts as a repetition loop "
            "and is decoded again at the next temperature ('inf' = off)"
        },
    )
    log_prob_threshold: float | None = field(
        default=-1.0,
        metadata={
            "help": "average token log-probability below which output is decoded again at "
            "the next temperature ('-inf' = off)"
        },
    )
    no_speech_threshold: float | None = field(
        default=0.6,
        metadata={
            "help": "a window whose no-speech probability is above this AND whose average "
            "log-probability is below --log-prob-threshold is treated as silence: no text "
            "('inf' = off)"
        },
    )
    repetition_penalty: float = field(
        default=1.0,
        metadata={"help": "penalty on tokens already generated (> 1 discourages loops)"},
    )
    no_repeat_ngram_size: int = field(
        default=0, metadata={"help": "forbid repeating n-grams of this size (0 = off)"}
    )
    numerals: str = field(
        default="auto",
        metadata={
            "help": "how Mandarin output writes numbers: hanzi = in characters, as read "
            "(四千万, 二零一六年), keep = as decoded (Whisper writes digits: 4000万), auto = as "
            "the model's training transcripts wrote them (recorded by whispertune train; "
            "keep for base models)",
            "choices": list(NUMERAL_CHOICES),
        },
    )
    rescore: bool = field(
        default=True,
        metadata={
            "help": "Mandarin transcription: rescore the beam's hypotheses and their "
            "homophones (same pinyin) with a word-frequency language model (jieba's "
            "dictionary) plus Whisper's own score, and write the winner in simplified "
            "characters; it fixes homophone errors such as 洋盐 → 扬言 (AISHELL test "
            "split, beam 5: the default fine-tune 23.2 → 19.3 %% CER, base 22.4 → 22.1 %%) "
            "and makes decoding ~2.4x slower on a CPU. Long-form windows rescore each "
            "segment. --no-rescore: as Whisper's beam decodes"
        },
    )


@dataclass
class Word:
    """A word with its time (seconds) and the model's confidence in it."""

    start: float
    end: float
    word: str
    probability: float


@dataclass
class ClipSegment:
    """A timestamped piece of a clip's transcript; times are relative to the clip start."""

    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    words: list[Word] | None = None
    # False for the unfinished last sentence of a window that ends mid-speech (see consumed).
    final: bool = True


@dataclass
class Transcript:
    """A decoded clip (at most 30 s)."""

    text: str
    language: str | None = None
    language_probability: float | None = None
    tokens: list[int] = field(default_factory=list)
    no_speech_prob: float | None = None
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    temperature: float | None = None
    # Only when decoded with timestamps:
    segments: list[ClipSegment] = field(default_factory=list)
    # Seconds from the clip start that the segments cover for good: a window cut in the middle
    # of a sentence ends with an unfinished segment, which the long-form loop decodes again
    # from here in the next window.
    consumed: float | None = None
    silence: bool = False  # dropped by the no-speech guard


class Transcriber(ABC):
    """Decodes clips of up to 30 s; long audio is cut into such clips before it gets here."""

    name: str = ""
    multilingual: bool = True
    supports_word_timestamps: bool = False

    # The writing conventions of the model's training transcripts (see output_style); set by
    # the backend from its model directory, applied to every decode per ``options.numerals``.
    recorded_style: OutputStyle = OutputStyle()

    def transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
        *,
        timestamps: bool = False,
        word_timestamps: bool = False,
        previous_tokens: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Transcript]:
        """One Transcript per clip, in one batched pass (plus fallback passes if needed).

        ``languages`` (codes) override ``options.language`` per clip; a clip with neither gets
        its language detected. ``previous_tokens`` (per clip) are the text tokens of what came
        before, given to the model as context (condition on previous text). The texts follow
        the model's output style (``options.numerals``); the tokens stay as decoded.
        """
        style = resolve_style(self.recorded_style, options.numerals)
        out = self._transcribe_clips(
            audios,
            options,
            languages,
            timestamps=timestamps,
            word_timestamps=word_timestamps,
            previous_tokens=previous_tokens,
        )
        return style_transcripts(out, style)

    @abstractmethod
    def _transcribe_clips(
        self,
        audios: Sequence[np.ndarray],
        options: DecodeOptions,
        languages: Sequence[str | None] | None = None,
        *,
        timestamps: bool = False,
        word_timestamps: bool = False,
        previous_tokens: Sequence[Sequence[int] | None] | None = None,
    ) -> list[Transcript]:
        """The backend's decode, as ``transcribe_clips`` describes it, before output style."""

    def encode_text(self, text: str) -> list[int]:
        """Text tokens (no special tokens) for prompts."""
        raise NotImplementedError

    def initial_prompt_tokens(self, options: DecodeOptions) -> list[int]:
        """The tokens of ``options.initial_prompt`` (none without one), in one place so that
        every backend gives the model the same context: Whisper's leading space included."""
        if not options.initial_prompt:
            return []
        return self.encode_text(" " + options.initial_prompt.strip())

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release the runtime's memory and threads."""


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


def join_texts(texts) -> str:
    """Pieces of transcript joined: a space between Latin words, nothing between CJK
    characters (Whisper's own segment texts usually carry their leading space)."""
    out = ""
    for t in texts:
        t = t.strip()
        if not t:
            continue
        if (
            out
            and (out[-1].isascii() and out[-1].isalnum() or out[-1] in ".,!?;:")
            and (t[0].isascii())
        ):
            out += " "
        out += t
    return out


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
    from dataclasses import replace

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
