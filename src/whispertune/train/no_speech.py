"""Generated no-speech clips mixed into training.

Why: a fine-tune sees only speech, and a model left alone on silence or noise (no VAD in front
of it: whisper.cpp, another runtime, a live stream) already writes "You", "Thanks for
watching" or a subtitle credit there; fine-tuning on speech alone only keeps that habit. A few
clips of generated silence and noise keep the model's two ways of saying "nothing here" in
training: half of them train Whisper's no-speech token right after <|startoftranscript|> (the
no-speech probability that decoders threshold), half train an empty transcript (end of text
right after the task prefix), which also holds when the decoder forces the prefix.

The clips are deterministic (seeded by index) and stored in the shared cache, so runs on the
same data reuse them and the encoder cache stays valid.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import numpy as np

from whispertune.data.manifest import Sample
from whispertune.train.labels import EMPTY_TRANSCRIPT, NO_SPEECH_LABEL

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
VERSION = "v2"


def is_digital_silence(index: int) -> bool:
    """1 clip in 4; one odd and one even index in every 8, so digital silence trains both
    label forms (v1 used index % 8 == 0: silence only ever trained the no-speech token, and
    the model alone still wrote "You" on it)."""
    return index % 8 in (0, 5)


def _clip(index: int) -> np.ndarray:
    """Clip ``index``: digital silence or noise with a random spectral slope (white to
    brown) at -75 to -25 dBFS, 2 to 30 s long."""
    rng = np.random.default_rng([20261202, index])
    n = int(SAMPLE_RATE * rng.uniform(2.0, 30.0))
    if is_digital_silence(index):
        return np.zeros(n, np.float32)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    f = np.arange(len(spectrum), dtype=np.float64)
    f[0] = 1.0
    slope = rng.uniform(0.0, 2.0)  # power ~ 1/f^slope: 0 white, 1 pink, 2 brown
    x = np.fft.irfft(spectrum / f ** (slope / 2), n)
    dbfs = rng.uniform(-75.0, -25.0)
    x = x / max(1e-12, float(np.sqrt(np.mean(x**2)))) * 10 ** (dbfs / 20)
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def no_speech_samples(count: int, directory: Path, samples: list[Sample]) -> list[Sample]:
    """``count`` generated no-speech samples (files written once under ``directory``), in the
    training data's most common language."""
    if count <= 0:
        return []
    import soundfile as sf

    languages = Counter(s.language for s in samples if s.language)
    language = languages.most_common(1)[0][0] if languages else None
    folder = directory / VERSION
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(count):
        path = folder / f"no-speech-{i:04d}.flac"
        if not path.is_file():
            audio = _clip(i)
            # per-process name: DDP ranks write the same clips at once
            tmp = path.with_name(f"{path.stem}.tmp{os.getpid()}.flac")
            sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16")
            tmp.replace(path)
        duration = sf.info(path).duration
        extra = {NO_SPEECH_LABEL: EMPTY_TRANSCRIPT} if i % 2 else {}
        out.append(
            Sample(audio_path=path, sentence="", language=language, duration=duration, extra=extra)
        )
    logger.info("mixing in %d generated no-speech clips (silence and noise)", count)
    return out
