"""Voice activity detection for long-form transcription: Silero VAD (the model bundled with
faster-whisper) finds the speech, speech regions become spans of at most 30 s to decode, and
its per-32 ms speech probabilities check what the model decoded.

Why a module of its own (as faster-whisper's vad.py): the VAD decides what audio the model is
shown and corrects the model's times; the decoding loop in ``transcribe`` only schedules spans.
Nothing here holds state between calls except :class:`SpeechFinder` (one per file), so every
function is safe from several threads at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from whispertune.audio import SAMPLE_RATE, AudioBuffer
from whispertune.backends.base import CHUNK_SECONDS

WINDOW = int(CHUNK_SECONDS * SAMPLE_RATE)  # Whisper's 30 s, in samples
VAD_FRAME = 512  # samples per Silero VAD probability (32 ms)


@dataclass(frozen=True)
class VadSettings:
    """What counts as speech (the ``--vad-*`` options of ``transcribe``)."""

    threshold: float = 0.5
    min_silence_ms: int = 500
    speech_pad_ms: int = 200

    def silero(self):
        """faster-whisper's VadOptions for these settings, regions capped at 30 s."""
        from faster_whisper.vad import VadOptions

        return VadOptions(
            threshold=self.threshold,
            min_silence_duration_ms=self.min_silence_ms,
            speech_pad_ms=self.speech_pad_ms,
            max_speech_duration_s=CHUNK_SECONDS,
        )


class SpeechFinder:
    """The speech spans of a streamed file, found one VAD pass at a time.

    Each pass reads up to ``pass_samples`` of audio (so memory stays bounded whatever the
    file's length), runs the VAD over the buffer and returns the spans that are complete. A
    speech region within a margin of the buffer's end may go on in the next block, and the
    block's last span may have room for speech that follows: both are carried over, to be
    grouped again with what the next pass reads. ``pass_samples`` must exceed a 30 s span plus
    the margin, so that every pass moves on.
    """

    def __init__(
        self,
        buffer: AudioBuffer,
        settings: VadSettings,
        pass_samples: int,
        first_span_samples: int = 0,
    ) -> None:
        """``first_span_samples`` (0 = off) limits the file's first span to that much audio
        (ending it at a pause; a longer first region stays whole), and makes the first pass
        read only what such a span needs: a stream's first segments then wait for a short
        decode and a short VAD pass instead of a 30 s span's decode and a 4 minute pass."""
        self.buffer = buffer
        self.options = settings.silero()
        self.pass_samples = pass_samples
        self.first_span_samples = first_span_samples
        self.spans_found = 0
        self.margin = (
            int((settings.min_silence_ms + 2 * settings.speech_pad_ms) * SAMPLE_RATE / 1000)
            + SAMPLE_RATE
        )
        self.speech = 0  # samples of speech found so far
        self.eof = False

    def next_pass(self) -> list[Span]:
        """The spans complete after reading the next block (all that is left at the end)."""
        from faster_whisper.vad import get_speech_timestamps

        buffer = self.buffer
        first = self.spans_found == 0 and self.first_span_samples > 0
        # a first pass for a short first span: a whole 30 s span past it, plus the margin
        # (every pass must be able to complete a span, or it would not move on)
        length = self.pass_samples
        if first:
            length = min(length, self.first_span_samples + WINDOW + 2 * self.margin)
        buffer.fill(buffer.start + length)
        self.eof = buffer.eof
        if not len(buffer.audio):
            return []
        start = buffer.start
        regions = get_speech_timestamps(buffer.audio, self.options)
        if self.eof:
            done, keep_from = regions, len(buffer.audio)
        else:
            cut = len(buffer.audio) - self.margin
            done = [r for r in regions if r["end"] <= cut]
            rest = [r for r in regions if r["end"] > cut]
            keep_from = min(cut, rest[0]["start"]) if rest else cut
            if done:
                keep_from = max(keep_from, done[-1]["end"])
            keep_from = max(0, keep_from)
        spans = list(
            group_regions(
                buffer.audio, done, start, first_window=self.first_span_samples if first else 0
            )
        )
        if not self.eof and spans and spans[-1].file_start > start:
            # (a last span at the buffer's start is the only one, with silence to the cut
            # after it: it cannot grow, and carrying it would leave the buffer stuck)
            last = spans.pop()
            keep_from = min(keep_from, last.file_start - start)
            done = [r for r in done if r["start"] + start < last.file_start]
        self.speech += sum(r["end"] - r["start"] for r in done)
        buffer.drop_before(start + keep_from)
        self.spans_found += len(spans)
        return spans


@dataclass
class Span:
    """Audio decoded as one window: pieces of the file laid end to end.

    ``pieces`` are (sample in the span, sample in the file, length); a time in the span maps
    to the file through the piece it falls in."""

    audio: np.ndarray
    pieces: list[tuple[int, int, int]]

    @property
    def file_start(self) -> int:
        return self.pieces[0][1]

    @property
    def file_end(self) -> int:
        """File sample just past the span's last piece."""
        return self.pieces[-1][1] + self.pieces[-1][2]

    def to_file(self, t: float, is_end: bool = False) -> float:
        x = t * SAMPLE_RATE
        chosen = self.pieces[0]
        for piece in self.pieces:
            start = piece[0]
            if start < x or (start == x and not is_end):
                chosen = piece
        span_start, file_start, length = chosen
        return (file_start + min(max(x - span_start, 0), length)) / SAMPLE_RATE

    def tail(self, cut: int) -> Span:
        """What follows sample ``cut`` of the span, as a span of its own."""
        pieces = []
        for span_start, file_start, length in self.pieces:
            end = span_start + length
            if end <= cut:
                continue
            skip = max(0, cut - span_start)
            pieces.append((span_start + skip - cut, file_start + skip, length - skip))
        return Span(self.audio[cut:], pieces)


def group_regions(
    buffer: np.ndarray,
    regions: list[dict],
    offset: int = 0,
    max_pause: float = 2.0,
    max_gap: float = 2.0,
    window: int = WINDOW,
    first_window: int = 0,
) -> Iterator[Span]:
    """Speech regions merged, in order, into spans of at most ``window`` samples (30 s; WhisperX's
    "merge" step).

    A pause between two regions stays in the span, shortened to ``max_pause`` seconds (its
    two ends are kept); a pause longer than ``max_gap`` ends the span, so long silences are
    never decoded. Why keep pauses: cutting them out entirely, as faster-whisper's batched
    pipeline does, runs sentences together — 5 CER points worse on the long-form test file —
    and leaves the model no pause to end a segment in. Shortening them to 1 s or 0.6 s fitted
    more speech per window (7 windows instead of 8) but cost 2.3-2.5 CER points there (and
    gained 0.5 WER points on English), so by default pauses are kept whole (a pause longer than
    2 s ends the span before it would be shortened). ``offset`` is the file sample of
    ``buffer[0]``. ``first_window`` (0 = ``window``) is the first span's limit instead (a first
    region longer than it stays whole, up to ``window``).
    """
    keep = int(max_pause * SAMPLE_RATE / 2)
    group: list[dict] = []
    length = 0
    limit = first_window or window

    def span() -> Span:
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
        return Span(np.concatenate(parts), pieces)

    for r in regions:
        pause = r["start"] - group[-1]["end"] if group else 0
        added = r["end"] - r["start"] + min(pause, 2 * keep)
        if group and (length + added > limit or pause > max_gap * SAMPLE_RATE):
            yield span()
            group, length, limit = [], 0, window
            added = r["end"] - r["start"]
        group.append(r)
        length += added
    if group:
        yield span()


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


def has_speech(audio: np.ndarray, threshold: float) -> bool:
    """Whether any 32 ms of ``audio`` is speech (the sequential mode's silence gate)."""
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
