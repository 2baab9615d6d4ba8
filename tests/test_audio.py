"""Any common format decodes to 16 kHz mono float32 with the right length and content."""

from __future__ import annotations

import av
import numpy as np
import pytest
import soundfile as sf

from whispertune.audio import SAMPLE_RATE, AudioError, audio_duration, load_audio


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def _encode(path, codec: str, rate: int, samples: np.ndarray, layout: str = "stereo") -> None:
    """Encode with PyAV (FFmpeg), as a user's recorder or browser would have."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        chans = 2 if layout == "stereo" else 1
        frame_size = 960 if "opus" in codec else 1024
        data = np.tile(samples[None, :], (chans, 1))
        for i in range(0, data.shape[1], frame_size):
            chunk = np.ascontiguousarray(data[:, i : i + frame_size])
            frame = av.AudioFrame.from_ndarray(chunk, format="fltp", layout=layout)
            frame.sample_rate = rate
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _dominant_freq(audio: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(audio))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(audio))


@pytest.mark.parametrize(
    "suffix,codec,rate",
    [
        (".mp3", "libmp3lame", 44100),
        (".m4a", "aac", 48000),
        (".ogg", "libopus", 48000),
        (".webm", "libopus", 48000),
        (".opus", "libopus", 48000),
        (".mp3", "libmp3lame", 22050),
        (".flac", "flac", 8000),
    ],
)
def test_compressed_formats_resample_to_16k_mono(tmp_path, suffix, codec, rate):
    path = tmp_path / f"tone_{codec}{suffix}"
    _encode(path, codec, rate, _tone(2.0, rate))
    audio = load_audio(path)
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert abs(len(audio) / SAMPLE_RATE - 2.0) < 0.1  # codec padding is a few ms
    assert abs(_dominant_freq(audio) - 440.0) < 5.0
    assert abs(audio_duration(path) - 2.0) < 0.1


def test_wav_stereo_44k_is_mixed_and_resampled(tmp_path):
    path = tmp_path / "a.wav"
    left = _tone(1.0, 44100, 300.0)
    sf.write(path, np.stack([left, left], axis=1), 44100)
    audio = load_audio(path)
    assert abs(len(audio) - 16000) <= 2
    assert abs(_dominant_freq(audio) - 300.0) < 5.0


def test_start_end_slicing(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(3.0, 16000), 16000)
    assert len(load_audio(path, start=1.0, end=2.5)) == 24000
    assert len(load_audio(path, start=2.0)) == 16000


def test_real_speech_opus(shared_data):
    audio = load_audio(shared_data / "zh/aishell_s0150/clips/BAC009S0150W0121.opus")
    assert abs(len(audio) / SAMPLE_RATE - 4.07) < 0.05
    assert 0.01 < float(np.abs(audio).max()) <= 1.0


@pytest.mark.parametrize(
    "content,message",
    [(None, "not found"), (b"", "empty"), (b"hello, this is text", "not a readable audio")],
)
def test_bad_files_give_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(AudioError, match=message) as err:
        load_audio(path)
    assert str(path) in str(err.value)


def test_end_before_start_is_refused(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, _tone(1.0, 16000), 16000)
    with pytest.raises(AudioError, match="not after"):
        load_audio(path, start=0.8, end=0.2)


# -- files that decode only in part (issue 25) -------------------------------------------------


def _cut(src, dst, fraction: float = 0.5):
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * fraction)])
    return dst


@pytest.mark.parametrize(
    "suffix,codec,rate,reason",
    [
        (".wav", None, 16000, "header gives"),
        (".mp3", "libmp3lame", 16000, "header gives"),
        (".flac", "flac", 44100, "header gives"),
        (".ogg", "libopus", 48000, "Ogg page"),
    ],
)
def test_a_file_cut_short_is_an_error_everywhere_unless_allowed(
    tmp_path, suffix, codec, rate, reason
):
    from whispertune.audio import (
        AudioStream,
        PartialAudioError,
        allow_partial_audio,
        truncation_problem,
    )

    whole = tmp_path / f"whole{suffix}"
    if codec is None:
        sf.write(whole, _tone(4.0, rate), rate, subtype="PCM_16")
    else:
        _encode(whole, codec, rate, _tone(4.0, rate), layout="mono")
    assert truncation_problem(whole) is None
    cut = _cut(whole, tmp_path / f"cut{suffix}")
    assert truncation_problem(cut) is not None  # data validate's cheap check
    with pytest.raises(PartialAudioError, match=f"cut.*{reason}|cut short"):
        load_audio(cut)
    with pytest.raises(PartialAudioError, match="--allow-partial-audio"):
        for _ in AudioStream(cut):
            pass
    with allow_partial_audio():
        part = load_audio(cut)
        streamed = np.concatenate(list(AudioStream(cut)))
    assert 0.5 < len(part) / SAMPLE_RATE < 3.0 and abs(len(streamed) - len(part)) < 1600
    assert len(load_audio(cut, allow_partial=True)) == len(part)


def test_no_decodable_samples_is_an_error_but_a_valid_empty_wav_is_empty(tmp_path):
    header_only = tmp_path / "header.wav"  # the 44-byte header of a 1 s WAV, no data
    header_only.write_bytes(_write(tmp_path / "a.wav").read_bytes()[:44])
    with pytest.raises(AudioError, match="no audio could be decoded of the 1.00 s"):
        load_audio(header_only)
    text = tmp_path / "notes.flac"
    text.write_text("meeting notes\n" * 50)
    with pytest.raises(AudioError, match="no audio could be decoded"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    assert len(load_audio(empty)) == 0


def _write(path):
    sf.write(path, _tone(1.0, 16000), 16000, subtype="PCM_16")
    return path
