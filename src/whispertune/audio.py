"""Audio in: decode any common format to 16 kHz mono float32, the only input Whisper takes,
whole (:func:`load_audio`, for clips) or streamed in blocks (:class:`AudioStream`, for files of
any length).

soundfile (libsndfile) is tried first because it is several times faster than PyAV for WAV, FLAC
and Ogg/Opus; everything else (mp3, m4a, webm, video containers) and any file at another sample
rate goes through PyAV, as faster-whisper does, which resamples. Every reader starts with the
same pre-check (:func:`audio_file_problem`), so a missing, unreadable or empty file is reported
in the same words by ``transcribe``, ``evaluate`` and ``data validate``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file cannot be read or holds no usable audio."""


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


def _read_soundfile(path: Path, start: float | None, end: float | None) -> np.ndarray | None:
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception:
        return None
    if info.samplerate != SAMPLE_RATE:
        return None
    first = int(round((start or 0.0) * SAMPLE_RATE))
    last = int(round(end * SAMPLE_RATE)) if end is not None else -1
    try:
        data, _ = sf.read(
            str(path), start=first, stop=None if last < 0 else last, dtype="float32", always_2d=True
        )
    except Exception:
        return None
    return data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]


def _read_pyav(path: Path, start: float | None, end: float | None) -> np.ndarray:
    from faster_whisper.audio import decode_audio

    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except Exception as e:  # PyAV raises many types (InvalidDataError, FFmpegError, ...)
        raise AudioError(f"{path}: not a readable audio file ({type(e).__name__}: {e})") from e
    first = int(round((start or 0.0) * SAMPLE_RATE))
    last = int(round(end * SAMPLE_RATE)) if end is not None else len(audio)
    return np.ascontiguousarray(audio[first:last], dtype=np.float32)


def load_audio(
    path: str | Path, start: float | None = None, end: float | None = None
) -> np.ndarray:
    """Return the samples of ``path`` (optionally ``start``..``end`` seconds) at 16 kHz mono."""
    path = Path(path)
    check_audio_file(path)
    if start is not None and end is not None and end <= start:
        raise AudioError(f"{path}: end_time {end} is not after start_time {start}")
    audio = _read_soundfile(path, start, end)
    if audio is None:
        audio = _read_pyav(path, start, end)
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
        check_audio_file(path)
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
