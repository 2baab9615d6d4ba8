"""Decode any common audio format to 16 kHz mono float32, the only input Whisper takes.

soundfile (libsndfile) is tried first because it is several times faster than PyAV for WAV, FLAC
and Ogg/Opus; everything else (mp3, m4a, webm, video containers) and any file at another sample
rate goes through PyAV, as faster-whisper does, which resamples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000

logger = logging.getLogger(__name__)


class AudioError(ValueError):
    """An audio file cannot be read or holds no usable audio."""


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
    if not path.exists():
        raise AudioError(f"{path}: audio file not found")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    if path.stat().st_size == 0:
        raise AudioError(f"{path}: file is empty (0 bytes)")
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
    if not path.is_file():
        raise AudioError(f"{path}: audio file not found")
    try:
        info = sf.info(str(path))
        if info.frames > 0:
            return info.frames / info.samplerate
    except Exception:
        pass
    return len(load_audio(path)) / SAMPLE_RATE
