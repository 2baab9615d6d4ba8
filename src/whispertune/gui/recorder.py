"""Microphone recording with sounddevice (PortAudio), 16 kHz mono, the rate Whisper takes.

Record-then-transcribe: the take is written to a WAV file that joins the queue like any
opened file, so it can be transcribed again with other settings and its transcript saved
like a file's. sounddevice is imported when recording starts, so a machine without
PortAudio (or without any input device, as servers and CI machines are) still runs the app
and gets a message that says what is missing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE

logger = logging.getLogger(__name__)


class MicrophoneError(RuntimeError):
    """Recording cannot start; the message is meant for the user."""


def _sounddevice():
    try:
        import sounddevice
    except (ImportError, OSError) as e:  # OSError: the PortAudio library itself is missing
        raise MicrophoneError(
            "Recording needs the sounddevice package and the PortAudio library "
            f"({e}). Install them with: pip install 'whispertune[gui]' (on Debian/Ubuntu "
            "also: apt-get install libportaudio2)."
        ) from e
    return sounddevice


def check_input_device() -> str:
    """The name of the default input device; MicrophoneError when there is none."""
    sd = _sounddevice()
    try:
        device = sd.query_devices(kind="input")
    except (sd.PortAudioError, ValueError) as e:
        raise MicrophoneError(
            "No microphone was found on this computer (no audio input device: "
            f"{e}). Connect a microphone and try again, or open an audio file instead."
        ) from e
    if not device or int(device.get("max_input_channels", 0)) < 1:
        raise MicrophoneError(
            "No microphone was found on this computer (the default audio device has no "
            "input channels). Connect a microphone and try again, or open an audio file."
        )
    return str(device.get("name", "microphone"))


class Recorder:
    """One take from the default input device; ``stop`` returns the samples."""

    def __init__(self) -> None:
        self._chunks: list[np.ndarray] = []
        self._lock = threading.Lock()
        self._stream = None
        self.device = ""

    @property
    def recording(self) -> bool:
        return self._stream is not None

    @property
    def seconds(self) -> float:
        with self._lock:
            return sum(len(c) for c in self._chunks) / SAMPLE_RATE

    def start(self) -> None:
        """Start recording; MicrophoneError (with the reason) when no device can be opened."""
        sd = _sounddevice()
        self.device = check_input_device()
        self._chunks = []
        try:
            stream = sd.InputStream(
                samplerate=SAMPLE_RATE, channels=1, dtype="float32", callback=self._callback
            )
            stream.start()
        except (sd.PortAudioError, ValueError) as e:
            raise MicrophoneError(f"The microphone {self.device!r} cannot be opened: {e}") from e
        self._stream = stream

    def _callback(self, indata, frames, time, status) -> None:  # PortAudio's thread
        if status:
            logger.warning("microphone: %s", status)
        with self._lock:
            self._chunks.append(indata[:, 0].copy())

    def stop(self) -> np.ndarray:
        """Stop and return the take (16 kHz mono float32)."""
        if self._stream is not None:
            self._stream.stop()
            self._stream.close()
            self._stream = None
        with self._lock:
            audio = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.float32)
            self._chunks = []
        return audio


def save_take(audio: np.ndarray, path: Path) -> Path:
    """Write a take as 16-bit WAV (what every player and the queue read)."""
    import soundfile as sf

    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), audio, SAMPLE_RATE, subtype="PCM_16")
    return path
