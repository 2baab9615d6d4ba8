"""Audio in: decode any common format to 16 kHz mono float32, the only input Whisper takes,
whole (:func:`load_audio`, for clips) or streamed in blocks (:class:`AudioStream`, for files of
any length).

soundfile (libsndfile) is tried first because it is several times faster than PyAV for WAV, FLAC
and Ogg/Opus; everything else (mp3, m4a, webm, video containers) and any file at another sample
rate goes through PyAV, as faster-whisper does, which resamples. Every reader starts with the
same pre-check (:func:`audio_file_problem`), so a missing, unreadable or empty file is reported
in the same words by ``transcribe``, ``evaluate`` and ``data validate``.

A file that ends before its header says it should (a copy cut short, a damaged packet) is an
error, :class:`PartialAudioError`, in every reader: decoders otherwise hand back the part that
decodes, and a clip scored or trained on its first half is silently wrong. Accepting such files
is an explicit, process-wide choice (:func:`allow_partial_audio`, the CLI's
``--allow-partial-audio``, the environment variable ``WHISPERTUNE_ALLOW_PARTIAL_AUDIO=1``): it
lives in the environment so that data-loading worker processes and threads see it too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)


# How far the decoded length may fall short of the header's before the file counts as cut
# short: the larger of this many seconds and this fraction of the header's duration (encoder
# delay, Opus pre-skip and resampling move the decoded length by a few ms; a cut file is off
# by seconds).
PARTIAL_TOLERANCE_SECONDS = 0.1
PARTIAL_TOLERANCE_FRACTION = 0.01
# The same for a length PyAV's demuxer estimated (no exact count in the header).
_ESTIMATE_TOLERANCE_FRACTION = 0.05
ALLOW_PARTIAL_ENV = "WHISPERTUNE_ALLOW_PARTIAL_AUDIO"
_PARTIAL_HINT = "--allow-partial-audio uses the part that decodes"


class AudioError(ValueError):
    """An audio file cannot be read or holds no usable audio."""


class PartialAudioError(AudioError):
    """The file decodes only in part: it ends before its header says (a truncated copy), or
    the decoder met damaged data in the middle."""


def partial_audio_allowed() -> bool:
    """Whether readers accept a file that decodes only in part (logged as a warning)."""
    return os.environ.get(ALLOW_PARTIAL_ENV, "") not in ("", "0")


@contextlib.contextmanager
def allow_partial_audio(allowed: bool = True) -> Iterator[None]:
    """Accept (or refuse) files that decode only in part, in this process and its children,
    for the duration of the block; the CLI wraps a command run in it."""
    before = os.environ.get(ALLOW_PARTIAL_ENV)
    os.environ[ALLOW_PARTIAL_ENV] = "1" if allowed else "0"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(ALLOW_PARTIAL_ENV, None)
        else:
            os.environ[ALLOW_PARTIAL_ENV] = before


def _tolerance(expected_seconds: float, estimated: bool = False) -> float:
    fraction = _ESTIMATE_TOLERANCE_FRACTION if estimated else PARTIAL_TOLERANCE_FRACTION
    return max(PARTIAL_TOLERANCE_SECONDS, fraction * expected_seconds)


def _partial(path: Path, reason: str, allow_partial: bool | None) -> None:
    """Raise PartialAudioError for ``reason``, or only warn when partial audio is allowed."""
    allowed = partial_audio_allowed() if allow_partial is None else allow_partial
    if allowed:
        logger.warning("%s: %s; using the part that decodes (--allow-partial-audio)", path, reason)
        return
    raise PartialAudioError(f"{path}: {reason}; {_PARTIAL_HINT}")


def _wav_declared_frames(path: Path) -> int | None:
    """Frames a RIFF/WAVE header declares, or None (not a WAV, or a streamed WAV whose size
    field is a placeholder). libsndfile reports the frames actually present, so a WAV cut
    short looks complete to it; the ``data`` chunk's declared size does not."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(12)
            if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
                return None
            block_align = 0
            while True:
                chunk = fh.read(8)
                if len(chunk) < 8:
                    return None
                cid, size = chunk[:4], struct.unpack("<I", chunk[4:])[0]
                if cid == b"fmt ":
                    fmt = fh.read(size + (size & 1))
                    if len(fmt) >= 14:
                        block_align = struct.unpack("<H", fmt[12:14])[0]
                    continue
                if cid == b"data":
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                fh.seek(size + (size & 1), os.SEEK_CUR)
    except OSError:
        return None


def _ogg_end_problem(path: Path) -> str | None:
    """An Ogg file's last page should be complete and flagged end-of-stream; a copy cut short
    ends in a partial page or a page without the flag (Ogg headers hold no total length, so
    this is the only cheap sign)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            if fh.read(4) != b"OggS":
                return None
            fh.seek(max(0, size - 65536))
            tail = fh.read()
    except OSError:
        return None
    at = tail.rfind(b"OggS")
    if at < 0 or len(tail) - at < 27:
        return "the file ends inside an Ogg page (cut short)"
    segments = tail[at + 26]
    if len(tail) - at < 27 + segments:
        return "the file ends inside an Ogg page (cut short)"
    body = sum(tail[at + 27 : at + 27 + segments])
    if len(tail) - at < 27 + segments + body:
        return "the file ends inside an Ogg page (cut short)"
    if not tail[at + 5] & 0x04:
        return "the file has no end-of-stream page (cut short)"
    return None


def truncation_problem(path: Path) -> str | None:
    """Whether ``path`` ends where its header says, checked cheaply (a few kB read), or why
    not: a WAV's declared data size, an Ogg file's last page, and for the other formats
    libsndfile reads (FLAC, MP3...) the last 0.1 s of the length the header gives. Formats
    only PyAV reads are not checked here (decoding them checks their length)."""
    import soundfile as sf

    declared = _wav_declared_frames(path)
    if declared is not None:
        try:
            present = sf.info(str(path)).frames
        except Exception:
            return None
        if present < declared:
            return (
                f"the WAV header declares {declared} frames but the file holds {present} "
                "(cut short)"
            )
        return None
    try:
        with open(path, "rb") as fh:
            is_ogg = fh.read(4) == b"OggS"
    except OSError:
        return None
    if is_ogg:  # the last page says it all; seeking in Opus would decode from a page before
        return _ogg_end_problem(path)
    try:
        with sf.SoundFile(str(path)) as fh:
            frames, rate = fh.frames, fh.samplerate
            if frames <= 0 or not fh.seekable():
                return None
            want = min(frames, max(1, rate // 10))
            try:
                fh.seek(frames - want)
                got = len(fh.read(want, dtype="float32"))
            except Exception as e:  # libsndfile: seeking or decoding past the cut fails
                return f"cannot decode the end of the audio ({e}): the file is cut short or damaged"
    except Exception:  # not a libsndfile format: nothing to check cheaply
        return None
    if got < want:
        return (
            f"the audio ends before the {frames / rate:.2f} s its header gives "
            "(cut short or damaged)"
        )
    return None


def audio_file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an audio file before anything decodes it (missing, a folder,
    unreadable, empty), or None. The reason names no path: each caller puts the path where its
    own output puts it (``data validate`` after the reason, ``transcribe`` before it)."""
    if not path.exists():
        return "audio file not found"
    if not path.is_file():
        return "audio path is not a file"
    try:
        size = path.stat().st_size
        with open(path, "rb"):
            pass
    except OSError as e:
        return f"audio file cannot be read ({e.strerror})"
    if size == 0:
        return "audio file is empty (0 bytes)"
    return None


def check_audio_file(path: Path) -> None:
    """Raise AudioError ("<path>: <reason>") when :func:`audio_file_problem` finds one."""
    problem = audio_file_problem(path)
    if problem is not None:
        raise AudioError(f"{path}: {problem}")


def _header_length(path: Path) -> tuple[float | None, bool]:
    """Seconds the header promises and whether that count is exact (libsndfile's frame count,
    or a WAV's declared data size) rather than a demuxer's estimate; (None, False) when
    libsndfile cannot open the file (PyAV's estimate is taken where the file is opened)."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None, False
    if info.samplerate <= 0:
        return None, False
    frames = max(info.frames, _wav_declared_frames(path) or 0)
    return frames / info.samplerate, True


def _check_length(
    path: Path,
    decoded: int,
    expected: float | None,
    exact: bool,
    damaged: int,
    allow_partial: bool | None,
) -> None:
    """The end-of-file check every reader runs: no samples at all is an error (unless an exact
    header says the file is empty: a valid 0 s WAV); fewer than the header promises, or
    damaged packets skipped, is partial audio."""
    if decoded == 0:
        if exact and expected == 0:
            return
        if exact and expected:
            raise AudioError(
                f"{path}: no audio could be decoded of the {expected:.2f} s its header gives "
                "(cut short or damaged)"
            )
        raise AudioError(f"{path}: no audio could be decoded from it (not an audio file?)")
    reasons = []
    if (ogg := _ogg_end_problem(path)) is not None:
        reasons.append(ogg)
    if damaged:
        reasons.append(f"{damaged} damaged packet(s) skipped (damaged)")
    seconds = decoded / SAMPLE_RATE
    if expected is not None and seconds < expected - _tolerance(expected, estimated=not exact):
        reasons.append(
            f"decodes to {seconds:.2f} s of the {expected:.2f} s its header gives (cut short)"
        )
    if reasons:
        _partial(path, "; ".join(reasons), allow_partial)


def _read_soundfile(
    path: Path, start: float | None, end: float | None, allow_partial: bool | None
) -> np.ndarray | None:
    """The samples through libsndfile, or None for a file it cannot read at 16 kHz (PyAV's
    job). A decoding error part-way is partial audio, not a reason to try PyAV: PyAV would
    return the part before the damage as if it were the whole file."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE:
        return None
    header = max(info.frames, _wav_declared_frames(path) or 0)
    first = int(round((start or 0.0) * SAMPLE_RATE))
    last = int(round(end * SAMPLE_RATE)) if end is not None else -1
    try:
        data, _ = sf.read(
            str(path), start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True
        )
    except Exception as e:
        _partial(path, f"decoding failed part-way ({e}): cut short or damaged", allow_partial)
        return _read_pyav(path, start, end, allow_partial=True, warned=True)
    expected = (min(last, header) if last >= 0 else header) - first
    if expected > 0:  # a header with frames and nothing decoded is an error too
        _check_length(path, data.shape[0], expected / SAMPLE_RATE, True, 0, allow_partial)
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def _read_pyav(
    path: Path,
    start: float | None,
    end: float | None,
    allow_partial: bool | None,
    warned: bool = False,
) -> np.ndarray:
    """The samples through PyAV; ``warned``: the caller already reported the file as partial
    (libsndfile failed part-way) and wants the part PyAV decodes, without a second warning."""
    stream = AudioStream(path, block_seconds=600.0, allow_partial=allow_partial, _pyav=True)
    stream._warned = warned
    blocks = list(stream)
    audio = np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
    first = int(round((start or 0.0) * SAMPLE_RATE))
    last = int(round(end * SAMPLE_RATE)) if end is not None else len(audio)
    return np.ascontiguousarray(audio[first:last], dtype=np.float32)


def load_audio(
    path: str | Path,
    start: float | None = None,
    end: float | None = None,
    *,
    allow_partial: bool | None = None,
) -> np.ndarray:
    """Return the samples of ``path`` (optionally ``start``..``end`` seconds) at 16 kHz mono.

    AudioError when nothing decodes; PartialAudioError when the file decodes only in part,
    unless ``allow_partial`` (None: :func:`partial_audio_allowed`).
    """
    path = Path(path)
    check_audio_file(path)
    if start is not None and end is not None and end <= start:
        raise AudioError(f"{path}: end_time {end} is not after start_time {start}")
    audio = _read_soundfile(path, start, end, allow_partial)
    if audio is None:
        audio = _read_pyav(path, start, end, allow_partial)
    if len(audio) == 0 and (start or end is not None):
        raise AudioError(f"{path}: no audio between start_time and end_time")
    return np.ascontiguousarray(audio, dtype=np.float32)


def audio_duration(path: str | Path) -> float:
    """Duration in seconds, from the header when the format has one, else by decoding."""
    import soundfile as sf

    path = Path(path)
    check_audio_file(path)
    try:
        info = sf.info(str(path))
        if info.frames > 0:
            return info.frames / info.samplerate
    except Exception:
        pass
    return len(load_audio(path)) / SAMPLE_RATE


# -- streamed ----------------------------------------------------------------------------------


class AudioStream:
    """A file's audio as 16 kHz mono float32 blocks, decoded as they are read.

    soundfile reads WAV/FLAC/Ogg at 16 kHz in blocks; anything else is decoded and resampled
    by PyAV (FFmpeg) frame by frame. Either way only one block is in memory at a time. When
    the blocks run out, the decoded length is checked against the header's (see
    :func:`_check_length`): a file cut short raises PartialAudioError after its last block,
    unless ``allow_partial`` (None: :func:`partial_audio_allowed`).
    """

    def __init__(
        self,
        source: str | Path | np.ndarray,
        block_seconds: float = 30.0,
        *,
        allow_partial: bool | None = None,
        _pyav: bool = False,
    ) -> None:
        self.block = max(1, int(block_seconds * SAMPLE_RATE))
        self.array: np.ndarray | None = None
        self.path: Path | None = None
        self.duration: float | None = None
        self.allow_partial = allow_partial
        self._use_soundfile = False
        self._expected: float | None = None
        self._exact = False
        self._warned = False  # partial audio already reported: check only for no samples
        if isinstance(source, np.ndarray):
            if source.ndim != 1:
                raise AudioError("audio array must be 1-D 16 kHz mono samples")
            self.array = source.astype(np.float32, copy=False)
            self.duration = len(source) / SAMPLE_RATE
            return
        path = Path(source)
        check_audio_file(path)
        self.path = path
        self._probe(force_pyav=_pyav)

    def _probe(self, force_pyav: bool = False) -> None:
        import soundfile as sf

        assert self.path is not None
        self._expected, self._exact = _header_length(self.path)
        if not force_pyav:
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
        if self._expected is None:
            self._expected, self._exact = self.duration, False

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

        assert self.path is not None
        total = 0
        try:
            # read() in a loop, not sf.blocks: blocks pads a block that comes back short (an
            # MP3 cut short) to its full size, hiding the cut
            with sf.SoundFile(str(self.path)) as fh:
                while True:
                    block = fh.read(self.block, dtype="float32", always_2d=True)
                    if not block.shape[0]:
                        break
                    total += block.shape[0]
                    yield block.mean(axis=1) if block.shape[1] > 1 else block[:, 0].copy()
        except RuntimeError as e:
            # what was yielded stands when partial audio is allowed; the length check below
            # is then moot (it would only repeat the warning)
            _partial(
                self.path,
                f"decoding failed part-way ({e}): cut short or damaged",
                self.allow_partial,
            )
            return
        _check_length(self.path, total, self._expected, self._exact, 0, self.allow_partial)

    def _pyav_blocks(self) -> Iterator[np.ndarray]:
        import av

        assert self.path is not None
        pending: list[np.ndarray] = []
        count = 0
        total = 0
        damaged = 0
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
                    damaged += 1  # skipped, as faster-whisper does; counted for the check
                    continue
                if frame is not None:
                    frame.pts = None  # resample by sample count, not by (possibly bad) pts
                for out in resampler.resample(frame):
                    arr = out.to_ndarray().reshape(-1).astype(np.float32, copy=False)
                    pending.append(arr)
                    count += len(arr)
                if count >= self.block or (frame is None and count):
                    data = np.concatenate(pending)
                    pending, count = [], 0
                    total += len(data)
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
        if self._warned:
            damaged, self._expected = 0, None
        _check_length(self.path, total, self._expected, self._exact, damaged, self.allow_partial)


class AudioBuffer:
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
