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
:func:`transcribe_files` (what the CLI runs: every file, every output format). The audio comes
from ``whispertune.audio`` (streamed blocks), the speech spans and checks from
``whispertune.vad``. Both report progress as ``ProgressEvent(stage="transcribe", unit="s")``
and stop on ``cancel`` with ``Cancelled`` (see whispertune.progress).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE, AudioBuffer, AudioError, AudioStream
from whispertune.backends import ModelOptions, create_transcriber
from whispertune.backends.base import (
    CHUNK_SECONDS,
    ClipSegment,
    DecodeOptions,
    Transcriber,
    Transcript,
    Word,
    join_texts,
)
from whispertune.errors import UserError
from whispertune.formats import FORMATS
from whispertune.languages import resolved_language
from whispertune.progress import Cancelled, ProgressCallback, ProgressEvent, Reporter, check_cancel
from whispertune.vad import (
    WINDOW,
    Span,
    SpeechFinder,
    VadSettings,
    has_speech,
    snap_starts_to_speech,
    speech_probabilities,
    speech_seconds,
)

logger = logging.getLogger(__name__)

# The unfinished text after the last full sentence of a window is decoded again; a remainder
# shorter than this holds no word and only invites a hallucination.
MIN_TAIL_SECONDS = 0.2
STAGE = "transcribe"  # the ProgressEvent stage of every event sent from here
# --first-span-seconds of the front ends that stream (the server, the desktop app): on the
# 3.6-minute long-form file the first segment came after 6.2 s instead of 28.9 s (2 cores at
# a load of 9), with the same CER (17.29 against 17.65 %); docs/server.md
STREAM_FIRST_SPAN_SECONDS = 10.0


@dataclass
class LongFormOptions:
    """How long audio is cut into 30 s windows, and what else is added to each segment."""

    # (the measurements behind the defaults: docs/transcription.md)

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
    first_span_seconds: float = field(
        default=0.0,
        metadata={
            "help": "VAD: limit a file's first span to this many seconds (cut at a pause) and "
            "read only what it needs before decoding it, so that the first segments come "
            "after a short decode (what a stream wants: the server and the desktop app use "
            f"{STREAM_FIRST_SPAN_SECONDS:g}); 0 = spans as the VAD groups them, up to 30 s"
        },
    )
    condition_on_previous_text: bool = field(
        default=False,
        metadata={
            "help": "sequential mode: give each window the text decoded before it as context "
            "(more consistent wording, but over noise the model then repeats earlier "
            "sentences: see docs/transcription.md)"
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
            "all, instead of letting the model invent text on it"
        },
    )

    def vad_settings(self) -> VadSettings:
        """What counts as speech, for the VAD."""
        return VadSettings(self.vad_threshold, self.vad_min_silence_ms, self.vad_speech_pad_ms)


@dataclass
class TranscribeOptions:
    """Options of ``whispertune transcribe``: files in, files out, model, decoding, long form."""

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
    """A whole file's transcription: what ``transcribe_files`` writes in every format."""

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


def _finish(info: TranscriptionInfo, total: int, report: Reporter) -> None:
    """End of a file in either long-form mode: its exact duration (the header's may be off),
    a last progress event at 100 %, and a warning for a file with no samples at all."""
    info.duration = total / SAMPLE_RATE
    report(info.duration, total=info.duration)
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
    """A loaded model plus the long-form options: call ``stream()`` once per file.

    A pipeline keeps no state between files, so ``stream`` may run in several threads at once
    as far as its transcriber allows (see ``Transcriber``: ct2 concurrently, transformers one
    decode at a time).
    """

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
        self.decode = replace(self.decode, language=resolved_language(self.decode.language))
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
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> Transcription:
        """Start transcribing ``audio`` (a path, or 16 kHz mono float32 samples).

        Bad files fail here, before any decoding (AudioError). ``progress`` gets
        ``ProgressEvent(stage="transcribe", unit="s")``: ``done`` is how far into the file
        (seconds) everything is decoded, ``total`` the file's duration; events come as the
        iteration starts, as each span or window is decoded, and at the end (done == total).
        When ``cancel`` is set, the iteration raises ``Cancelled(state="partial")`` before the
        next batch: the segments yielded so far stand.
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
        report = Reporter(progress, STAGE, total=source.duration, unit="s")
        run = self._vad_segments if self.long_form.vad else self._sequential_segments
        return Transcription(info, self._timed(run(source, info, report, cancel), info, report))

    def transcribe(
        self,
        audio: str | Path | np.ndarray,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> TranscriptionResult:
        """``stream`` decoded to the end."""
        return self.stream(audio, progress, cancel).result()

    @staticmethod
    def _timed(
        segments: Iterator[Segment], info: TranscriptionInfo, report: Reporter
    ) -> Iterator[Segment]:
        start = time.perf_counter()
        report(0.0)  # the bar shows before the first batch ends
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
        on_clip_done: Callable[[int], None] | None = None,
    ) -> list[Transcript]:
        """Decode windows with timestamps, then check them against the VAD.

        Per window, Silero's speech probabilities (about 0.15 % of real time) are used twice:
        segment starts the model put in a pause move onto the speech (see
        snap_starts_to_speech), and ``consumed`` is cut back to the end of the last segment
        when the model stopped early — it sometimes ends its output with a timestamp and
        leaves the last seconds of speech of a window out (measured: 2 sentences of 45 lost on
        an English long-form file); the caller then decodes from there again.
        """
        check_cancel(cancel, "transcription", state="partial")
        options = replace(self.decode, language=info.language)
        out = self.transcriber.transcribe_clips(
            audios,
            options,
            timestamps=True,
            word_timestamps=self.long_form.word_timestamps,
            previous_tokens=[previous] if previous is not None else None,
            on_clip_done=on_clip_done,
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

    # -- sequential: Whisper's seek loop over streamed audio -----------------------------------

    def _sequential_segments(
        self,
        source: AudioStream,
        info: TranscriptionInfo,
        report: Reporter,
        cancel: threading.Event | None,
    ) -> Iterator[Segment]:
        buffer = AudioBuffer(source)
        seek = 0
        history: list[int] = []  # text tokens of the kept segments since the last reset
        next_id = 1
        while True:
            buffer.fill(seek + WINDOW)
            window = buffer.audio[seek - buffer.start : seek - buffer.start + WINDOW]
            if len(window) == 0 or (seek > 0 and len(window) < MIN_TAIL_SECONDS * SAMPLE_RATE):
                break
            if self.long_form.silence_gate and not has_speech(window, self.long_form.vad_threshold):
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
                        yield _file_segment(next_id, t, seg, _shifted(offset))
                        next_id += 1
                        history.extend(seg.tokens)
                    consumed = t.consumed if t.consumed else window_s
                    seek += max(1, int(round(consumed * SAMPLE_RATE)))
                    if (t.temperature or 0.0) > 0.5:
                        history = []  # a window that needed a hot decode is no context to keep
            buffer.drop_before(seek)
            report(min(seek, buffer.total) / SAMPLE_RATE)
        _finish(info, buffer.total, report)

    # -- VAD: speech spans, batched -------------------------------------------------------------

    def _decode_spans(
        self,
        spans: list[Span],
        info: TranscriptionInfo,
        cancel: threading.Event | None,
        report: Reporter,
    ) -> list[Segment]:
        """Decode spans in one batch; a span the model stopped early in is decoded again from
        where its text ends, batched with the other such spans. Returns the segments in time
        order, with file times.

        Progress moves as each span of the first pass is decoded (the backend says when, part
        by part): to the end of the spans decoded so far without a gap. Reported per batch
        only, a batch of four 30 s spans with Mandarin rescoring held the bar still for two
        minutes on a CPU.
        """
        decoded = [False] * len(spans)

        def span_done(i: int) -> None:
            decoded[i] = True
            ready = decoded.index(False) if not all(decoded) else len(spans)
            if ready:
                report(spans[ready - 1].file_end / SAMPLE_RATE)

        segments: list[Segment] = []
        on_clip_done: Callable[[int], None] | None = span_done
        while spans:
            results = self._decode([sp.audio for sp in spans], info, cancel, None, on_clip_done)
            on_clip_done = None  # tails decoded again are inside spans already counted
            again = []
            for sp, t in zip(spans, results, strict=True):
                if t.silence:
                    continue
                duration = len(sp.audio) / SAMPLE_RATE
                for seg in t.segments:
                    if seg.final or t.consumed is None or t.consumed >= duration:
                        segments.append(_file_segment(0, t, seg, sp.to_file))
                if t.consumed is not None and t.consumed < duration - 0.5:
                    again.append(sp.tail(int(t.consumed * SAMPLE_RATE)))
            spans = again
        segments.sort(key=lambda s: (s.start, s.end))
        return segments

    def _vad_segments(
        self,
        source: AudioStream,
        info: TranscriptionInfo,
        report: Reporter,
        cancel: threading.Event | None,
    ) -> Iterator[Segment]:
        batch = max(1, self.decode.batch_size)
        buffer = AudioBuffer(source)
        # Audio per VAD pass: 4 minutes, or a batch of 30 s spans if that is more (16 MB of
        # samples; smaller blocks cut more spans short at their ends).
        finder = SpeechFinder(
            buffer,
            self.long_form.vad_settings(),
            max(240, batch * 30) * SAMPLE_RATE,
            first_span_samples=int(self.long_form.first_span_seconds * SAMPLE_RATE),
        )
        next_id = 1
        pending: list[Span] = []
        first = True
        while True:
            check_cancel(cancel, "transcription", state="partial")
            pending.extend(finder.next_pass())
            # Decode what is ready: full batches, or everything at the end of the file. The
            # first span of a file goes alone: its language is detected from it, and a stream
            # (the server, the desktop app) shows its first segments after one span's decode
            # instead of a whole batch's (the spans are the same either way).
            while pending and (
                finder.eof or len(pending) >= batch or first or info.language is None
            ):
                n = 1 if first or info.language is None else batch
                first = False
                todo, pending = pending[:n], pending[n:]
                for seg in self._decode_spans(todo, info, cancel, report):
                    seg.id = next_id
                    next_id += 1
                    yield seg
                # everything before the next span (or the audio still buffered) is done
                report((pending[0].file_start if pending else buffer.start) / SAMPLE_RATE)
            if finder.eof and not pending:
                break
        info.speech_duration = finder.speech / SAMPLE_RATE
        _finish(info, buffer.total, report)
        if buffer.total and finder.speech == 0:
            logger.info("%s: no speech found by the VAD", info.source)


def _shifted(offset: float) -> Callable[..., float]:
    """The window-to-file time map of a sequential window that starts at ``offset`` s."""

    def to_file(t: float, is_end: bool = False) -> float:
        return offset + t

    return to_file


def _file_segment(
    next_id: int, t: Transcript, seg: ClipSegment, to_file: Callable[..., float]
) -> Segment:
    """A window's segment with file times: ``to_file(t, is_end=False)`` maps a time in the
    window to the file (an offset for sequential windows, a span's pieces for VAD spans)."""
    words = None
    if seg.words is not None:
        words = []
        for w in seg.words:
            # both ends of a word through the same piece (the one holding its middle)
            mid = to_file((w.start + w.end) / 2)
            start, end = to_file(w.start), to_file(w.end, is_end=True)
            words.append(
                Word(
                    start=round(min(start, mid), 3),
                    end=round(max(end, mid), 3),
                    word=w.word,
                    probability=w.probability,
                )
            )
    start, end = to_file(seg.start), to_file(seg.end, is_end=True)
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


# -- files in, files out -----------------------------------------------------------------------


@dataclass
class FileOutcome:
    """One input file of ``transcribe_files``: its result and the files written, or why not."""

    path: Path
    result: TranscriptionResult | None = None
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None


def transcribe_files(
    options: TranscribeOptions,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
    on_segment: Callable[[Path, TranscriptionInfo, Segment], None] | None = None,
) -> list[FileOutcome]:
    """Transcribe every file of ``options.audio`` and write the chosen formats.

    A file that cannot be read is reported in its FileOutcome (``error``) and the others
    still run; so is a file whose outputs could not be written (an OS error: disk full, a
    folder removed), which keeps its ``result`` so the text is not lost. ``output_dir`` is
    checked before the model is loaded (a file, under a file, not writable: UserError).
    ``progress`` gets ``ProgressEvent(stage="transcribe", unit="s")`` counting audio
    seconds over all files; ``on_segment`` sees each segment as it is decoded. When
    ``cancel`` is set the run stops before the next batch with ``Cancelled``: the files
    finished before stay written (state "partial"; "removed" when there were none), the
    cancelled file gets no output.
    """
    from whispertune.formats import output_stems, write_outputs
    from whispertune.staging import check_output_dir, clean_leftovers

    paths = [Path(p) for p in options.audio]
    if not paths:
        raise UserError("no audio files given")
    formats = list(FORMATS) if options.format == "all" else [options.format]
    if options.format not in (*FORMATS, "all"):
        raise UserError(f"unknown format {options.format!r}; use {', '.join(FORMATS)} or all")
    resolved_language(options.decode.language)  # unknown names fail before the model loads
    check_output_dir(options.output_dir, "--output-dir")
    clean_leftovers(options.output_dir)
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
    report = Reporter(progress, STAGE, total=total, unit="s")
    done_before = 0.0
    outcomes: list[FileOutcome] = []
    try:
        for (path, stream, err), stem in zip(streams, stems, strict=True):
            if stream is None:
                outcomes.append(FileOutcome(path, error=err))
                continue

            def file_progress(event: ProgressEvent, base: float = done_before) -> None:
                report(base + event.done, message=event.message)

            try:
                run = pipeline.stream(path, file_progress, cancel)
                segments = []
                for seg in run:
                    segments.append(seg)
                    if on_segment is not None:
                        on_segment(path, run.info, seg)
                # set during the file's last batch: the file still gets no output
                check_cancel(cancel, "transcription", state="partial")
            except Cancelled as e:
                written = sum(1 for o in outcomes if o.outputs)
                raise Cancelled(
                    f"transcription cancelled in {path} (nothing written for it; "
                    f"{written} file(s) before it written)",
                    state="partial" if written else "removed",
                ) from e
            except AudioError as e:  # damaged in the middle: keep going with the next file
                outcomes.append(FileOutcome(path, error=str(e)))
                done_before += stream.duration or 0.0
                continue
            result = TranscriptionResult(run.info, segments)
            done_before += result.info.duration or 0.0
            try:
                written = write_outputs(result, options.output_dir, stem, formats)
            except OSError as e:  # the text is kept in the outcome; the next file still runs
                error = f"{path}: transcribed, but writing its output failed: {e}"
                outcomes.append(FileOutcome(path, result=result, error=error))
                continue
            outcomes.append(FileOutcome(path, result=result, outputs=written))
        report(done_before, total=done_before)  # exact durations: ends at its total
    finally:
        pipeline.transcriber.close()
    return outcomes
