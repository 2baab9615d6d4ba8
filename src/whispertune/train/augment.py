"""Waveform augmentation for training (all off by default): noise at a random SNR, speed
perturbation, volume, time shift. Each draw comes from the RNG the caller passes, so results
are reproducible per (seed, epoch, sample)."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np

from whispertune.audio import SAMPLE_RATE, load_audio
from whispertune.errors import UserError
from whispertune.train.config import AugmentOptions

logger = logging.getLogger(__name__)

AUDIO_SUFFIXES = {".wav", ".flac", ".mp3", ".ogg", ".opus", ".m4a", ".webm"}


class Augmenter:
    def __init__(self, options: AugmentOptions) -> None:
        self.o = options
        self.noise_files: list[Path] = []
        if options.noise_prob > 0:
            if options.noise_dir is None or not Path(options.noise_dir).is_dir():
                raise UserError("--noise-prob needs --noise-dir: a folder of noise recordings")
            self.noise_files = sorted(
                p for p in Path(options.noise_dir).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not self.noise_files:
                raise UserError(f"{options.noise_dir}: no audio files for noise augmentation")

    def __call__(self, audio: np.ndarray, rng: random.Random) -> np.ndarray:
        o = self.o
        if o.speed_prob > 0 and rng.random() < o.speed_prob:
            audio = change_speed(audio, rng.uniform(*o.speed_range))
        if o.shift_prob > 0 and rng.random() < o.shift_prob:
            audio = shift(audio, int(rng.uniform(-o.shift_ms, o.shift_ms) * SAMPLE_RATE / 1000))
        if o.volume_prob > 0 and rng.random() < o.volume_prob:
            audio = audio * (10 ** (rng.uniform(*o.volume_db) / 20))
        if self.noise_files and rng.random() < o.noise_prob:
            noise = load_audio(rng.choice(self.noise_files))
            audio = add_noise(audio, noise, rng.uniform(*o.noise_snr), rng)
        return np.clip(audio, -1.0, 1.0).astype(np.float32)


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """Resample in time (pitch changes with speed, as Kaldi-style speed perturbation does)."""
    n = max(1, int(round(len(audio) / factor)))
    return np.interp(np.linspace(0, len(audio) - 1, n), np.arange(len(audio)), audio).astype(
        np.float32
    )


def shift(audio: np.ndarray, samples: int) -> np.ndarray:
    """Positive: prepend silence; negative: cut the start."""
    if samples > 0:
        return np.concatenate([np.zeros(samples, dtype=np.float32), audio])
    return audio[-samples:] if -samples < len(audio) else audio


def add_noise(
    audio: np.ndarray, noise: np.ndarray, snr_db: float, rng: random.Random
) -> np.ndarray:
    if len(noise) == 0:
        return audio
    if len(noise) < len(audio):
        noise = np.tile(noise, int(np.ceil(len(audio) / len(noise))))
    start = rng.randrange(0, len(noise) - len(audio) + 1)
    noise = noise[start : start + len(audio)]
    p_audio = float(np.mean(audio**2)) + 1e-10
    p_noise = float(np.mean(noise**2)) + 1e-10
    return audio + noise * np.sqrt(p_audio / (p_noise * 10 ** (snr_db / 10)))
