"""Transcribe audio files of any length: streamed decoding, VAD-batched or sequential windows,
hallucination guards, segments (and words) with times, yielded as they are decoded.

Two ways through a long file, both over audio decoded in blocks (never the whole file at once,
so a 2-hour recording needs no more memory than a 5-minute one):

- ``vad`` (default): Silero VAD (the model bundled in faster-whisper) finds the speech; speech
  regions are merged into spans of at most 30 s, pauses included, and spans are decoded in
  batches of ``batch_size``, with timestamps, so each span gives sentence-level segments.
  Silence is never shown to the model, which removes the commonest hallucination (text
  invented on silence and noise), and batching makes it the fast path.
- sequential (``--no-vad``): Whisper's own algorithm. A 30 s window is decoded with timestamps;
  the next window starts where the last complete sentence ended, so sentences cut by a window
  edge are decoded whole in the next one. Optionally each window is conditioned on the text
  before it. One window at a time: slower, but it sees all the audio (windows in which the VAD
  finds no speech at all are skipped unless ``silence_gate`` is off).

In both, the VAD's speech probabilities then correct two Whisper habits: segment starts put in
the pause before a sentence move onto the speech, and a window whose text stops before its
speech does is decoded again from where the text stopped.

The library entry points are :class:`Pipeline` (load a model once, then ``stream()`` files:
a generator of :class:`Segment` plus an ``info`` with the detected language) and
:func:`transcribe` (what the CLI runs: every file, every output format).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE, AudioError
from whispertune.backends import ModelOptions, create_transcriber
from whispertune.backends.base import (
    CHUNK_SECONDS,
    DecodeOptions,
    Transcriber,
    Transcript,
    Word,
    join_texts,
)
from whispertune.errors import UserError
from whispertune.formats import FORMATS
from whispertune.languages import language_code
from whispertune.progress import Cancelled

logger = logging.getLogger(__name__)

WINDOW = int(CHUNK_SECONDS * SAMPLE_RATE)
# The unfinished text after the last full sentence of a window is decoded again; a remainder
# shorter than this holds no word and only invites a hallucination.
MIN_TAIL_SECONDS = 0.2

Progress = Callable[[float, float | None], None]


@dataclass
class LongFormOptions:
    """How long audio is cut into 30 s windows, and what else is added to each segment."""

    vad: bool = field(
        default=True,
        metadata={
            "help": "find speech with Silero VAD and decode spans of speech in batches (fast, "
            "and no text invented on silence); --no-vad decodes every 30 s window in turn, "
            "carried on by timestamps, as Whisper itself does"
        },
    )
    vad_threshold: float = field(
        default=0.5, metadata={"help": "VAD speech probability above which audio is speech"}
    )
    vad_min_silence_ms: int = field(
        default=500,
        metadata={"help": "silence (ms) that ends a speech region in the VAD"},
    )
    vad_speech_pad_ms: int = field(
        default=200,
        metadata={"help": "audio (ms) kept on each side of a VAD speech region"},
    )
    condition_on_previous_text: bool = field(
        default=False,
        metadata={
            "help": "sequential mode: give each window the text decoded before it as context "
            "(more consistent wording, but over noise the model then repeats earlier "
            "sentences; see above)"
        },
    )
    word_timestamps: bool = field(
        default=False,
        metadata={"help": "add per-word times and probabilities (cross-attention alignment)"},
    )
    silence_gate: bool = field(
        default=True,
        metadata={
            "help": "sequential mode: skip a 30 s window in which the VAD finds no speech at "
            "all, instead of letting the model invent text on it ('You', 'Thanks for "
            "watching' on silence and noise)"
        },
    )


@dataclass
class TranscribeOptions:
    audio: list[Path] = field(
        metadata={
            "positional": True,
            "help": "audio or video files, any length, any format FFmpeg reads",
        }
    )
    load: ModelOptions = field(default_factory=ModelOptions)
    output_dir: Path = field(
        default=Path("."), metadata={"help": "folder for the output files (created)"}
    )
    format: str = field(
        default="all",
        metadata={
            "help": "output files: txt, srt, vtt, json, tsv, or all of them",
            "choices": [*FORMATS, "all"],
        },
    )
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    long_form: LongFormOptions = field(default_factory=LongFormOptions)


@dataclass
class Segment:
    """A piece of transcript with its place in the file (seconds)."""

    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = field(default_factory=list)
    avg_logprob: float | None = None
    compression_ratio: float | None = None
    no_speech_prob: float | None = None
    temperature: float | None = None
    words: list[Word] | None = None


@dataclass
class TranscriptionInfo:
    """What is known about a file's transcription; filled in as decoding goes on."""

    source: str
    language: str | None = None
    language_probability: float | None = None
    duration: float | None = None  # from the header; exact once decoding ends
    speech_duration: float | None = None  # what VAD kept (vad mode)
    model: str = ""
    backend: str = ""
    mode: str = "vad"
    wall_seconds: float = 0.0


@dataclass
class TranscriptionResult:
    info: TranscriptionInfo
    segments: list[Segment]

    @property
    def text(self) -> str:
        return join_texts(s.text for s in self.segments)

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            **asdict(self.info),
            "segments": [asdict(s) for s in self.segments],
        }


# -- audio, streamed ---------------------------------------------------------------------------


class AudioStream:
    """A file's audio as 16 kHz mono float32 blocks, decoded as they are read.

    soundfile reads WAV/FLAC/Ogg at 16 kHz in blocks; anything else is decoded and resampled
    by PyAV (FFmpeg) frame by frame. Either way only one block is in memory at a time.
    """

    def __init__(self, source: str | Path | np.ndarray, block_seconds: float = 30.0) -> None:
        self.block = max(1, int(block_seconds * SAMPLE_RATE))
        self.array: np.ndarray | None = None
        self.path: Path | None = None
        self.duration: float | None = None
        self._use_soundfile = False
        if isinstance(source, np.ndarray):
            if source.ndim != 1:
                raise AudioError("audio array must be 1-D 16 kHz mono samples")
            self.array = source.astype(np.float32, copy=False)
            self.duration = len(source) / SAMPLE_RATE
            return
        path = Path(source)
        if not path.exists():
            raise AudioError(f"{path}: audio file not found")
        if not path.is_file():
            raise AudioError(f"{path}: not a file")
        try:
            size = path.stat().st_size
            with open(path, "rb"):
                pass
        except OSError as e:
            raise AudioError(f"{path}: cannot read the file ({e.strerror})") from e
        if size == 0:
            raise AudioError(f"{path}: file is empty (0 bytes)")
        self.path = path
        self._probe()

    def _probe(self) -> None:
        import soundfile as sf

        assert self.path is not None
        try:
            info = sf.info(str(self.path))
            if info.samplerate == SAMPLE_RATE:
                self._use_soundfile = True
                self.duration = info.frames / info.samplerate
                return
        except Exception:  # not a libsndfile format: PyAV below
            pass
        import av

        try:
            with av.open(str(self.path), metadata_errors="ignore") as container:
                if not container.streams.audio:
                    raise AudioError(f"{self.path}: has no audio stream")
                stream = container.streams.audio[0]
                if container.duration is not None:
                    self.duration = container.duration / av.time_base
                elif stream.duration is not None and stream.time_base is not None:
                    self.duration = float(stream.duration * stream.time_base)
        except AudioError:
            raise
        except Exception as e:  # PyAV raises many types (InvalidDataError, FFmpegError, ...)
            raise AudioError(
                f"{self.path}: not a readable audio file ({type(e).__name__}: {e})"
            ) from e

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.array is not None:
            for i in range(0, len(self.array), self.block):
                yield self.array[i : i + self.block]
        elif self._use_soundfile:
            yield from self._soundfile_blocks()
        else:
            yield from self._pyav_blocks()

    def _soundfile_blocks(self) -> Iterator[np.ndarray]:
        import soundfile as sf

        try:
            for block in sf.blocks(
                str(self.path), blocksize=self.block, dtype="float32", always_2d=True
            ):
                yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0].copy()
        except RuntimeError as e:
            raise AudioError(f"{self.path}: decoding failed: {e}") from e

    def _pyav_blocks(self) -> Iterator[np.ndarray]:
        import av

        pending: list[np.ndarray] = []
        count = 0
        try:
            container = av.open(str(self.path), metadata_errors="ignore")
        except Exception as e:
            raise AudioError(f"{self.path}: not a readable audio file ({e})") from e
        try:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            frames = container.decode(audio=0)
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    frame = None
                except av.error.InvalidDataError:
                    continue  # a damaged packet: skip it, as faster-whisper does
                if frame is not None:
                    frame.pts = None  # resample by sample count, not by (possibly bad) pts
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    pending.append(arr)
                    count += len(arr)
                if count >= self.block or (frame is None and count):
                    data = np.concatenate(pending)
                    pending, count = [], 0
                    for i in range(0, len(data), self.block):
                        yield data[i : i + self.block]
                if frame is None:
                    break
        except AudioError:
            raise
        except Exception as e:
            raise AudioError(f"{self.path}: decoding failed ({type(e).__name__}: {e})") from e
        finally:
            container.close()


class _AudioBuffer:
    """The part of a streamed file a long-form loop still needs, with its place in the file.

    Both ways through a file (sequential windows, VAD passes) read blocks until enough audio
    is buffered and then forget what they are done with, so memory stays bounded by a window
    or a VAD pass whatever the file's length; this is that bookkeeping, written once.
    """

    def __init__(self, source: AudioStream) -> None:
        self._blocks = iter(source)
        self.audio = np.zeros(0, dtype=np.float32)
        self.start = 0  # file sample index of audio[0]
        self.total = 0  # samples read from the file so far
        self.eof = False

    @property
    def end(self) -> int:
        """File sample index just past the buffered audio."""
        return self.start + len(self.audio)

    def fill(self, until: int) -> None:
        """Read blocks until the buffer reaches file sample ``until`` or the file ends."""
        while not self.eof and self.end < until:
            block = next(self._blocks, None)
            if block is None:
                self.eof = True
            else:
                self.audio = np.concatenate([self.audio, block])
                self.total += len(block)

    def drop_before(self, sample: int) -> None:
        """Forget the audio before file sample ``sample``."""
        drop = sample - self.start
        if drop > 0:
            self.audio = self.audio[drop:]
            self.start = sample


def _finish(info: TranscriptionInfo, total: int, progress: Progress | None) -> None:
    """End of a file in either long-form mode: its exact duration (the header's may be off),
    a last progress call at 100 %, and a warning for a file with no samples at all."""
    info.duration = total / SAMPLE_RATE
    if progress is not None:
        progress(info.duration, info.duration)
    if total == 0:
        logger.warning("%s: no audio samples", info.source)


# -- the pipeline ------------------------------------------------------------------------------


class Transcription:
    """A transcription in progress: iterate it for segments as they are decoded; ``info``
    gets the language (and probability) before the first segment is yielded."""

    def __init__(self, info: TranscriptionInfo, segments: Iterator[Segment]) -> None:
        self.info = info
        self._segments = segments

    def __iter__(self) -> Iterator[Segment]:
        return self._segments

    def result(self) -> TranscriptionResult:
        """Decode to the end and return every segment."""
        segments = list(self._segments)
        return TranscriptionResult(self.info, segments)


class Pipeline:
    """A loaded model plus the long-form options: call ``stream()`` once per file."""

    def __init__(
        self,
        transcriber: Transcriber,
        decode: DecodeOptions | None = None,
        long_form: LongFormOptions | None = None,
        *,
        model: str = "",
    ) -> None:
        self.transcriber = transcriber
        self.decode = decode or DecodeOptions()
        self.long_form = long_form or LongFormOptions()
        self.model = model
        if self.decode.language and self.decode.language.strip().lower() == "auto":
            self.decode = replace(self.decode, language=None)
        if self.decode.language:
            self.decode = replace(self.decode, language=language_code(self.decode.language))
        if not transcriber.multilingual:
            if self.decode.language not in (None, "en"):
                logger.warning("an English-only model: transcribing as English")
            self.decode = replace(self.decode, language="en")
        if self.long_form.word_timestamps and not transcriber.supports_word_timestamps:
            raise UserError(
                f"--word-timestamps is not available with the {transcriber.name} backend; "
                "use --backend ct2"
            )

    @classmethod
    def from_options(cls, options: TranscribeOptions) -> Pipeline:
        transcriber = create_transcriber(options.load)
        return cls(transcriber, options.decode, options.long_form, model=options.load.model)

    def stream(
        self,
        audio: str | Path | np.ndarray,
        progress: Progress | None = None,
        cancel: threading.Event | None = None,
    ) -> Transcription:
        """Start transcribing ``audio`` (a path, or 16 kHz mono float32 samples).

        Bad files fail here, before any decoding (AudioError). ``progress(done_s, total_s)``
        is called after each decoded batch; ``cancel`` stops between batches by raising
        Cancelled from the iteration.
        """
        source = AudioStream(audio, block_seconds=CHUNK_SECONDS)
        info = TranscriptionInfo(
            source=str(audio) if not isinstance(audio, np.ndarray) else "<array>",
            language=self.decode.language,
            language_probability=1.0 if self.decode.language else None,
            duration=source.duration,
            model=self.model,
            backend=self.transcriber.name,
            mode="vad" if self.long_form.vad else "sequential",
        )
        run = self._vad_segments if self.long_form.vad else self._sequential_segments
        return Transcription(info, self._timed(run(source, info, progress, cancel), info))

    def transcribe(self, audio, progress=None, cancel=None) -> TranscriptionResult:
        return self.stream(audio, progress, cancel).result()

    def _timed(self, segments: Iterator[Segment], info: TranscriptionInfo) -> Iterator[Segment]:
        start = time.perf_counter()
        for seg in segments:
            info.wall_seconds = time.perf_counter() - start
            yield seg
        info.wall_seconds = time.perf_counter() - start

    # -- shared helpers ------------------------------------------------------------------------

    def _decode(
        self,
        audios: list[np.ndarray],
        info: TranscriptionInfo,
        cancel: threading.Event | None,
        previous: list[int] | None = None,
    ) -> list[Transcript]:
        """Decode windows with timestamps, then check them against the VAD.

        Per window, Silero's speech probabilities (about 0.15 % of real time) are used twice:
        segment starts the model put in a pause move onto the speech (see
        snap_starts_to_speech), and ``consumed`` is cut back to the end of the last segment
        when the model stopped early — it sometimes ends its output with a timestamp and
        leaves the last seconds of speech of a window out (measured: 2 sentences of 45 lost on
        an English long-form file); the caller then decodes from there again.
        """
        if cancel is not None and cancel.is_set():
            raise Cancelled("transcription cancelled", state="partial")
        options = replace(self.decode, language=info.language)
        out = self.transcriber.transcribe_clips(
            audios,
            options,
            timestamps=True,
            word_timestamps=self.long_form.word_timestamps,
            previous_tokens=[previous] if previous is not None else None,
        )
        for audio, t in zip(audios, out, strict=True):
            probs = speech_probabilities(audio)
            snap_starts_to_speech(
                t.segments,
                probs,
                self.long_form.vad_threshold,
                self.long_form.vad_speech_pad_ms / 1000,
            )
            covered = max((s.end for s in t.segments), default=0.0)
            if t.segments and covered >= 1.0 and t.consumed is not None and t.consumed > covered:
                if speech_seconds(probs, covered + 0.5, self.long_form.vad_threshold) >= 1.0:
                    t.consumed = covered
                    for s in t.segments:
                        s.final = True
        if info.language is None and out:
            info.language = out[0].language
            info.language_probability = out[0].language_probability
            logger.info(
                "%s: detected language %s (probability %.2f)",
                info.source,
                info.language,
                info.language_probability or 0.0,
            )
        return out

    @staticmethod
    def _segment(next_id: int, t: Transcript, seg, start: float, end: float, words) -> Segment:
        return Segment(
            id=next_id,
            start=round(start, 3),
            end=round(max(start, end), 3),
            text=seg.text.strip(),
            tokens=list(seg.tokens),
            avg_logprob=t.avg_logprob,
            compression_ratio=t.compression_ratio,
            no_speech_prob=t.no_speech_prob,
            temperature=t.temperature,
            words=words,
        )

    # -- sequential: Whisper's seek loop over streamed audio -----------------------------------

    def _sequential_segments(
        self,
        source: AudioStream,
        info: TranscriptionInfo,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Iterator[Segment]:
        buffer = _AudioBuffer(source)
        seek = 0
        history: list[int] = []  # text tokens of the kept segments since the last reset
        next_id = 1
        while True:
            buffer.fill(seek + WINDOW)
            window = buffer.audio[seek - buffer.start : seek - buffer.start + WINDOW]
            if len(window) == 0 or (seek > 0 and len(window) < MIN_TAIL_SECONDS * SAMPLE_RATE):
                break
            if self.long_form.silence_gate and not _has_speech(
                window, self.long_form.vad_threshold
            ):
                seek += len(window)  # no speech at all in 30 s: nothing to decode
            else:
                previous = history[-223:] if self.long_form.condition_on_previous_text else None
                t = self._decode([window], info, cancel, previous)[0]
                offset = seek / SAMPLE_RATE
                window_s = len(window) / SAMPLE_RATE
                if t.silence or not t.segments:
                    seek += len(window)
                else:
                    for seg in t.segments:
                        if not seg.final:
                            continue  # decoded again, whole, from the next window
                        seg.end = min(seg.end, window_s)
                        yield _offset_segment(next_id, t, seg, offset)
                        next_id += 1
                        history.extend(seg.tokens)
                    consumed = t.consumed if t.consumed else window_s
                    seek += max(1, int(round(consumed * SAMPLE_RATE)))
                    if (t.temperature or 0.0) > 0.5:
                        history = []  # a window that needed a hot decode is no context to keep
            buffer.drop_before(seek)
            if progress is not None:
                progress(min(seek, buffer.total) / SAMPLE_RATE, source.duration)
        _finish(info, buffer.total, progress)

    # -- VAD: speech spans, batched -------------------------------------------------------------

    def _vad_options(self):
        from faster_whisper.vad import VadOptions

        lf = self.long_form
        return VadOptions(
            threshold=lf.vad_threshold,
            min_silence_duration_ms=lf.vad_min_silence_ms,
            speech_pad_ms=lf.vad_speech_pad_ms,
            max_speech_duration_s=CHUNK_SECONDS,
        )

    def _decode_spans(
        self,
        spans: list[_Span],
        info: TranscriptionInfo,
        cancel: threading.Event | None,
    ) -> list[Segment]:
        """Decode spans in one batch; a span the model stopped early in is decoded again from
        where its text ends, batched with the other such spans. Returns the segments in time
        order, with file times."""
        segments: list[Segment] = []
        while spans:
            results = self._decode([sp.audio for sp in spans], info, cancel)
            again = []
            for sp, t in zip(spans, results, strict=True):
                if t.silence:
                    continue
                duration = len(sp.audio) / SAMPLE_RATE
                for seg in t.segments:
                    if seg.final or t.consumed is None or t.consumed >= duration:
                        segments.append(_span_segment(t, seg, sp))
                if t.consumed is not None and t.consumed < duration - 0.5:
                    again.append(sp.tail(int(t.consumed * SAMPLE_RATE)))
            spans = again
        segments.sort(key=lambda s: (s.start, s.end))
        return segments

    def _vad_segments(
        self,
        source: AudioStream,
        info: TranscriptionInfo,
        progress: Progress | None,
        cancel: threading.Event | None,
    ) -> Iterator[Segment]:
        from faster_whisper.vad import get_speech_timestamps

        vad_options = self._vad_options()
        batch = max(1, self.decode.batch_size)
        # Audio per VAD pass: 4 minutes, or a batch of 30 s spans if that is more (16 MB of
        # samples; smaller blocks cut more spans short at their ends).
        block_target = max(240, batch * 30) * SAMPLE_RATE
        # A speech region closer than this to the end of the buffer may go on in the next
        # block: it is carried over instead of decoded now.
        lf = self.long_form
        margin = int((lf.vad_min_silence_ms + 2 * lf.vad_speech_pad_ms) * SAMPLE_RATE / 1000)
        margin += SAMPLE_RATE
        buffer = _AudioBuffer(source)
        speech = 0
        next_id = 1
        pending: list[_Span] = []
        while not buffer.eof or pending:
            buffer.fill(buffer.start + block_target)
            eof = buffer.eof
            buffer_start = buffer.start
            if len(buffer.audio):
                regions = get_speech_timestamps(buffer.audio, vad_options)
                if eof:
                    done, keep_from = regions, len(buffer.audio)
                else:
                    cut = len(buffer.audio) - margin
                    done = [r for r in regions if r["end"] <= cut]
                    rest = [r for r in regions if r["end"] > cut]
                    keep_from = min(cut, rest[0]["start"]) if rest else cut
                    if done:
                        keep_from = max(keep_from, done[-1]["end"])
                    keep_from = max(0, keep_from)
                spans = list(_group_regions(buffer.audio, done, buffer_start))
                if not eof and spans:
                    # The block's last span may have room for speech of the next block: its
                    # regions go back to the buffer, to be grouped again with what follows.
                    last = spans.pop()
                    keep_from = min(keep_from, last.file_start - buffer_start)
                    done = [r for r in done if r["start"] + buffer_start < last.file_start]
                pending.extend(spans)
                speech += sum(r["end"] - r["start"] for r in done)
                buffer.drop_before(buffer_start + keep_from)
            # Decode what is ready: full batches, or everything at the end of the file. The
            # first span of a file goes alone when the language is to be detected from it.
            while pending and (eof or len(pending) >= batch or info.language is None):
                n = 1 if info.language is None else batch
                todo, pending = pending[:n], pending[n:]
                for seg in self._decode_spans(todo, info, cancel):
                    seg.id = next_id
                    next_id += 1
                    yield seg
                if progress is not None:
                    done_s = (buffer.start if not pending else pending[0].file_start) / SAMPLE_RATE
                    progress(done_s, source.duration)
            if eof and not pending:
                break
        info.speech_duration = speech / SAMPLE_RATE
        _finish(info, buffer.total, progress)
        if buffer.total and speech == 0:
            logger.info("%s: no speech found by the VAD", info.source)


@dataclass
class _Span:
    """Audio decoded as one window: pieces of the file laid end to end.

    ``pieces`` are (sample in the span, sample in the file, length); a time in the span maps
    to the file through the piece it falls in."""

    audio: np.ndarray
    pieces: list[tuple[int, int, int]]

    @property
    def file_start(self) -> int:
        return self.pieces[0][1]

    def to_file(self, t: float, is_end: bool = False) -> float:
        x = t * SAMPLE_RATE
        chosen = self.pieces[0]
        for piece in self.pieces:
            start = piece[0]
            if start < x or (start == x and not is_end):
                chosen = piece
        span_start, file_start, length = chosen
        return (file_start + min(max(x - span_start, 0), length)) / SAMPLE_RATE

    def tail(self, cut: int) -> _Span:
        """What follows sample ``cut`` of the span, as a span of its own."""
        pieces = []
        for span_start, file_start, length in self.pieces:
            end = span_start + length
            if end <= cut:
                continue
            skip = max(0, cut - span_start)
            pieces.append((span_start + skip - cut, file_start + skip, length - skip))
        return _Span(self.audio[cut:], pieces)


def _group_regions(
    buffer: np.ndarray,
    regions: list[dict],
    offset: int = 0,
    max_pause: float = 2.0,
    max_gap: float = 2.0,
) -> Iterator[_Span]:
    """Speech regions merged, in order, into spans of at most 30 s (WhisperX's "merge" step).

    A pause between two regions stays in the span, shortened to ``max_pause`` seconds (its
    two ends are kept); a pause longer than ``max_gap`` ends the span, so long silences are
    never decoded. Why keep pauses: cutting them out entirely, as faster-whisper's batched
    pipeline does, runs sentences together — 5 CER points worse on the long-form test file —
    and leaves the model no pause to end a segment in. Shortening them to 1 s or 0.6 s fitted
    more speech per window (7 windows instead of 8) but cost 2.3-2.5 CER points there (and
    gained 0.5 WER points on English), so by default pauses are kept whole. ``offset`` is the
    file sample of ``buffer[0]``.
    """
    keep = int(max_pause * SAMPLE_RATE / 2)
    group: list[dict] = []
    length = 0

    def span() -> _Span:
        parts, pieces = [], []
        pos = 0
        start = group[0]["start"]
        for i, r in enumerate(group):
            end = r["end"]
            nxt = group[i + 1]["start"] if i + 1 < len(group) else None
            if nxt is not None and nxt - end > 2 * keep:
                end += keep
                parts.append(buffer[start:end])
                pieces.append((pos, offset + start, end - start))
                pos += end - start
                start = nxt - keep
            elif nxt is None:
                parts.append(buffer[start:end])
                pieces.append((pos, offset + start, end - start))
        return _Span(np.concatenate(parts), pieces)

    for r in regions:
        pause = r["start"] - group[-1]["end"] if group else 0
        added = r["end"] - r["start"] + min(pause, 2 * keep)
        if group and (length + added > WINDOW or pause > max_gap * SAMPLE_RATE):
            yield span()
            group, length = [], 0
            added = r["end"] - r["start"]
        group.append(r)
        length += added
    if group:
        yield span()


VAD_FRAME = 512  # samples per Silero VAD probability (32 ms)


def speech_probabilities(audio: np.ndarray) -> np.ndarray:
    """Silero VAD's speech probability per 32 ms of ``audio`` (faster-whisper's model)."""
    from faster_whisper.vad import get_vad_model

    if len(audio) == 0:
        return np.zeros(0, dtype=np.float32)
    padded = np.pad(audio, (0, VAD_FRAME - len(audio) % VAD_FRAME))
    return np.asarray(get_vad_model()(padded)).reshape(-1)


def speech_seconds(probs: np.ndarray, after: float, threshold: float) -> float:
    """Seconds of speech frames after ``after`` seconds."""
    frame_s = VAD_FRAME / SAMPLE_RATE
    return float(np.count_nonzero(probs[int(after / frame_s) :] >= threshold)) * frame_s


def _has_speech(audio: np.ndarray, threshold: float) -> bool:
    probs = speech_probabilities(audio)
    return bool(len(probs)) and bool(np.any(probs >= threshold))


def snap_starts_to_speech(
    segments: list, probs: np.ndarray, threshold: float = 0.5, pad: float = 0.2
) -> None:
    """Move segment starts that Whisper put in a pause onto the start of the speech.

    Whisper opens a segment where the previous one closed (the two timestamps are usually
    equal), so a start lands in the pause before the sentence, early by the pause's length
    (measured without this: 38 % of starts within 0.5 s of the true sentence start on the
    long-form file, 73 % with it). The VAD's per-32 ms speech probability says where the
    speech really begins; a start in non-speech moves forward to it, less ``pad``, never
    further than 2 s nor past the segment's end. Starts inside speech are left alone.
    """
    frame_s = VAD_FRAME / SAMPLE_RATE
    for seg in segments:
        i = int(seg.start / frame_s)
        if i >= len(probs) or probs[i] >= threshold:
            continue
        limit = min(len(probs), int(min(seg.end, seg.start + 2.0) / frame_s))
        ahead = np.nonzero(probs[i:limit] >= threshold)[0]
        if len(ahead) == 0:
            continue
        new = max(seg.start, (i + ahead[0]) * frame_s - pad)
        if new >= seg.end:
            continue
        seg.start = new
        if seg.words and seg.words[0].start < new < seg.words[0].end:
            seg.words[0].start = new


def _offset_segment(next_id: int, t: Transcript, seg, offset_s: float) -> Segment:
    """A window's segment with times in the file."""
    words = None
    if seg.words is not None:
        words = [
            Word(
                start=round(offset_s + w.start, 3),
                end=round(offset_s + w.end, 3),
                word=w.word,
                probability=w.probability,
            )
            for w in seg.words
        ]
    return Pipeline._segment(next_id, t, seg, offset_s + seg.start, offset_s + seg.end, words)


def _span_segment(t: Transcript, seg, span: _Span) -> Segment:
    """A span's segment with times in the file."""
    words = None
    if seg.words is not None:
        words = []
        for w in seg.words:
            # both ends of a word through the same piece (the one holding its middle)
            mid = span.to_file((w.start + w.end) / 2)
            start, end = span.to_file(w.start), span.to_file(w.end, is_end=True)
            words.append(
                Word(
                    start=round(min(start, mid), 3),
                    end=round(max(end, mid), 3),
                    word=w.word,
                    probability=w.probability,
                )
            )
    start, end = span.to_file(seg.start), span.to_file(seg.end, is_end=True)
    return Pipeline._segment(0, t, seg, start, end, words)


# -- files in, files out -----------------------------------------------------------------------


@dataclass
class FileOutcome:
    path: Path
    result: TranscriptionResult | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None


def transcribe(
    options: TranscribeOptions,
    progress: Progress | None = None,
    cancel: threading.Event | None = None,
    on_segment: Callable[[Path, TranscriptionInfo, Segment], None] | None = None,
) -> list[FileOutcome]:
    """Transcribe every file of ``options.audio`` and write the chosen formats.

    A file that cannot be read is reported in its FileOutcome (``error``) and the others
    still run; a cancelled run raises Cancelled. ``progress(done_s, total_s)``
    counts audio seconds over all files; ``on_segment`` sees each segment as it is decoded.
    """
    from whispertune.formats import output_stems, write_outputs

    paths = [Path(p) for p in options.audio]
    if not paths:
        raise UserError("no audio files given")
    formats = list(FORMATS) if options.format == "all" else [options.format]
    if options.format not in (*FORMATS, "all"):
        raise UserError(f"unknown format {options.format!r}; use {', '.join(FORMATS)} or all")
    if options.decode.language and options.decode.language.strip().lower() != "auto":
        language_code(options.decode.language)  # unknown codes fail before the model loads
    streams: list[tuple[Path, AudioStream | None, str | None]] = []
    for p in paths:
        try:
            streams.append((p, AudioStream(p), None))
        except AudioError as e:
            streams.append((p, None, str(e)))
    if all(s is None for _, s, _ in streams):
        raise AudioError("; ".join(err for _, _, err in streams if err))
    pipeline = Pipeline.from_options(options)
    stems = output_stems(paths)
    total = sum((s.duration or 0.0) for _, s, _ in streams if s is not None) or None
    done_before = 0.0
    outcomes = []
    try:
        for (path, stream, err), stem in zip(streams, stems, strict=True):
            if stream is None:
                outcomes.append(FileOutcome(path, error=err))
                continue

            def file_progress(done: float, _total: float | None, base=done_before) -> None:
                if progress is not None:
                    progress(base + done, total)

            file_progress(0.0, stream.duration)  # the bar shows before the first batch ends
            try:
                run = pipeline.stream(path, file_progress, cancel)
                segments = []
                for seg in run:
                    segments.append(seg)
                    if on_segment is not None:
                        on_segment(path, run.info, seg)
            except Cancelled:
                raise
            except AudioError as e:  # damaged in the middle: keep going with the next file
                outcomes.append(FileOutcome(path, error=str(e)))
                done_before += stream.duration or 0.0
                continue
            result = TranscriptionResult(run.info, segments)
            done_before += result.info.duration or 0.0
            written = write_outputs(result, options.output_dir, stem, formats)
            outcomes.append(FileOutcome(path, result=result, outputs=written))
    finally:
        pipeline.transcriber.close()
    return outcomes
