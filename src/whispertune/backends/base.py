"""The one interface every backend implements, so evaluation, transcription, the server and the
UIs never care which runtime decodes: :class:`Transcriber` and the data it takes and returns.

Only the interface lives here (the backends import it and it imports none of them); the
decoding rules both backends share (guards, timestamp parsing, languages) are in
``whispertune.backends.decoding``, and :func:`whispertune.backends.create_transcriber` builds a
backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from whispertune.output_style import (
    NUMERAL_CHOICES,
    OutputStyle,
    resolve_style,
    style_transcripts,
)

CHUNK_SECONDS = 30.0  # Whisper's fixed encoder window

# OpenAI's and faster-whisper's schedule: greedy/beam first, then sampling at rising
# temperatures for the windows whose output looks like a loop or is improbable.
DEFAULT_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)

Tokens = list[int]  # token ids of a text or a prompt


@dataclass
class DecodeOptions:
    """How to decode: the same options for every backend.

    The guard defaults (compression ratio 2.4, log-prob -1.0, no-speech 0.6, temperatures
    0.0..1.0) are Whisper's own; they were kept after measuring them against looser and
    stricter values on long-form speech and on generated silence and noise (the measurements
    are in docs/transcription.md).
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
            "help": "30 s windows (clips or speech spans) decoded together; raise it on a GPU "
            "(on a CPU larger batches are no faster: see docs/transcription.md)"
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
            "characters; it fixes homophone errors such as 洋盐 → 扬言 and adds about a "
            "quarter to the decoding time on a CPU (figures: docs/benchmarks.md). Long-form "
            "windows rescore each segment. --no-rescore: as Whisper's beam decodes"
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


@dataclass(frozen=True)
class ClipBatch:
    """What one :meth:`Transcriber.transcribe_clips` call asks a backend to decode.

    One object rather than the same five keyword arguments in every backend's signature, so
    that a backend that splits a batch (for its workers, or per prompt) takes a part with
    :meth:`part`. ``clip_done(i)`` tells the caller that clip ``i``'s transcript is ready; a
    backend that finishes clips one part at a time calls it per part, from the caller's thread
    (``transcribe_clips`` reports the rest when the backend returns).
    """

    audios: Sequence[np.ndarray]
    languages: Sequence[str | None] | None = None
    timestamps: bool = False
    word_timestamps: bool = False
    previous_tokens: Sequence[Sequence[int] | None] | None = None
    clip_done: Callable[[int], None] | None = None

    def __len__(self) -> int:
        return len(self.audios)

    def part(self, start: int, stop: int) -> ClipBatch:
        """Clips ``start``..``stop`` with their own languages and context (no ``clip_done``:
        a part is decoded for the caller, who reports it)."""
        return replace(
            self,
            audios=self.audios[start:stop],
            languages=self.languages[start:stop] if self.languages else None,
            previous_tokens=(
                self.previous_tokens[start:stop] if self.previous_tokens is not None else None
            ),
            clip_done=None,
        )


class EncodedClip:
    """A clip as a backend's encoder has seen it, handed to :meth:`Transcriber.score_tokens`
    so that rescoring a decoded clip costs no second encoder pass. Each backend subclasses it
    with what it keeps (an encoder output, features); callers only pass it back."""


class Transcriber(ABC):
    """Decodes clips of up to 30 s; long audio is cut into such clips before it gets here.

    Threads: ``transcribe_clips``, ``score_tokens`` and ``encode_text`` may be called from
    several threads at once on one transcriber. The ct2 backend runs such calls concurrently
    (CTranslate2 queues them on its replicas; all per-call state is local, and the shared
    caches, the tokenizer and the rescoring word model are read-only or built under a lock);
    the transformers backend serializes them with a lock, one decode at a time (generate
    is not re-entrant). ``close`` must not overlap any other call.
    """

    name: str = ""
    multilingual: bool = True
    supports_word_timestamps: bool = False
    # Whether score_tokens counts the end-of-text token after each sequence.
    scores_end_of_text: bool = True
    # Whether token_logprobs gives score_tokens' per-token terms: rescoring then scores only
    # the candidates that may still win (whispertune.rescoring.TokenScorer).
    scores_per_token: bool = False
    # Whether token_logprobs honours ``limits`` (computes only the leading terms asked for,
    # and the rest later at the cost of the rest): rescoring then scores a candidate's start
    # first and drops it when that already loses.
    scores_prefixes: bool = False
    # How far two scorings of the same tokens may differ (in nats, a sequence's sum), as the
    # passes that compute them differ: rescoring drops a candidate unscored only when even its
    # bound loses by more than this.
    score_noise: float = 1e-3
    # (first chunk, candidates a pass) of a scorer of prefixes, where its cost differs from
    # what rescoring's PREFIX_CHUNK and BATCH were chosen on; None: those.
    score_shape: tuple[int, int] | None = None

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
        on_clip_done: Callable[[int], None] | None = None,
    ) -> list[Transcript]:
        """One Transcript per clip, in one batched pass (plus fallback passes if needed).

        ``languages`` (codes) override ``options.language`` per clip; a clip with neither gets
        its language detected. ``previous_tokens`` (per clip) are the text tokens of what came
        before, given to the model as context (condition on previous text). The texts follow
        the model's output style (``options.numerals``); the tokens stay as decoded.
        ``on_clip_done(i)`` is called once per clip, in this thread, as soon as the backend
        has clip ``i`` (for progress finer than a batch).
        """
        reported: set[int] = set()

        def clip_done(i: int) -> None:
            if on_clip_done is not None and i not in reported:
                reported.add(i)
                on_clip_done(i)

        batch = ClipBatch(
            audios, languages, timestamps, word_timestamps, previous_tokens, clip_done
        )
        out = self._transcribe_clips(batch, options)
        for i in range(len(out)):
            clip_done(i)
        return style_transcripts(out, resolve_style(self.recorded_style, options.numerals))

    @abstractmethod
    def _transcribe_clips(self, batch: ClipBatch, options: DecodeOptions) -> list[Transcript]:
        """The backend's decode, as ``transcribe_clips`` describes it, before output style."""

    def score_tokens(
        self,
        clip: np.ndarray | EncodedClip,
        prompt: Sequence[int],
        sequences: Sequence[Sequence[int]],
    ) -> list[float]:
        """Log-probability of each token sequence after ``prompt`` given the clip (teacher
        forcing): the acoustic side of rescoring (whispertune.rescoring).

        ``clip`` is the audio (16 kHz, at most 30 s) or the EncodedClip a backend made while
        decoding it. ``prompt`` is the decoder's start (start-of-transcript, language, task,
        no-timestamps, after any previous-text prompt). The end-of-text token after each
        sequence is counted when ``scores_end_of_text`` is set; CTranslate2's alignment leaves
        it out, and its caller adds the beam's own end scores instead.
        """
        if not isinstance(clip, EncodedClip):
            clip = self._encode_clip(np.asarray(clip, dtype=np.float32))
        return self._score_tokens(clip, list(prompt), [list(s) for s in sequences])

    def token_logprobs(
        self,
        clip: np.ndarray | EncodedClip,
        prompt: Sequence[int],
        sequences: Sequence[Sequence[int]],
        limits: Sequence[int | None] | None = None,
    ) -> list[np.ndarray]:
        """The terms :meth:`score_tokens` sums: one array of log-probabilities per sequence,
        one per token, for a backend with ``scores_per_token``. Rescoring bounds a candidate
        by the prefix it shares with a text already scored (the decoder is causal), so it
        skips most candidates without a decoder pass.

        ``limits``: per sequence, at least how many leading terms are wanted (None: all). A
        backend with ``scores_prefixes`` computes only those; others return every term."""
        if not isinstance(clip, EncodedClip):
            clip = self._encode_clip(np.asarray(clip, dtype=np.float32))
        seqs = [list(s) for s in sequences]
        return self._token_logprobs(clip, list(prompt), seqs, limits)

    def _token_logprobs(
        self,
        clip: EncodedClip,
        prompt: Tokens,
        seqs: list[Tokens],
        limits: Sequence[int | None] | None = None,
    ) -> list[np.ndarray]:
        """``token_logprobs`` on the backend's own encoding (backends with
        ``scores_per_token``)."""
        raise NotImplementedError(f"the {self.name} backend scores whole sequences only")

    @abstractmethod
    def _encode_clip(self, audio: np.ndarray) -> EncodedClip:
        """The backend's encoding of one clip, for ``score_tokens`` given audio."""

    @abstractmethod
    def _score_tokens(self, clip: EncodedClip, prompt: Tokens, seqs: list[Tokens]) -> list[float]:
        """``score_tokens`` on the backend's own encoding of the clip."""

    @abstractmethod
    def encode_text(self, text: str) -> list[int]:
        """Text tokens (no special tokens) for prompts and scoring."""

    def initial_prompt_tokens(self, options: DecodeOptions) -> list[int]:
        """The tokens of ``options.initial_prompt`` (none without one), in one place so that
        every backend gives the model the same context: Whisper's leading space included."""
        if not options.initial_prompt:
            return []
        return self.encode_text(" " + options.initial_prompt.strip())

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release the runtime's memory and threads."""


# Here and not in ``decoding``: it is the rule the data types' texts are joined by, and callers
# of the interface (evaluation, long-form transcription) need it without the decoding rules.
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
