"""The encoder in bf16 (backends.bf16_encoder): Whisper's encoder as CTranslate2 computes it
in float32, to bf16 rounding, and closer to it than CTranslate2's own int8 encoder; the ct2
backend takes it where the CPU has native bf16 and the compute type is int8."""

from __future__ import annotations

import numpy as np
import pytest

from whispertune.backends.bf16_encoder import Bf16Encoder


def _features(n_mels: int, clips: int = 2) -> np.ndarray:
    """Log-mel-like features: a quiet floor with louder random frames in the first third, as
    a short clip padded to 30 s looks."""
    rng = np.random.default_rng(0)
    feats = np.full((clips, n_mels, 3000), -0.5, dtype=np.float32)
    feats[:, :, :1000] = rng.uniform(-0.5, 1.5, (clips, n_mels, 1000))
    return feats


def _ct2_encode(ct2_dir, feats: np.ndarray, compute_type: str) -> np.ndarray:
    import ctranslate2

    model = ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type=compute_type)
    return np.asarray(model.encode(ctranslate2.StorageView.from_array(feats)))


def _rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a - b) ** 2)))


def test_it_is_ctranslate2s_float32_encoder_to_bf16_rounding(tiny_ct2_dir):
    import ctranslate2

    n_mels = ctranslate2.models.Whisper(str(tiny_ct2_dir)).n_mels
    feats = _features(n_mels)
    want = _ct2_encode(tiny_ct2_dir, feats, "float32")
    got = Bf16Encoder(tiny_ct2_dir)(feats)
    assert got.shape == want.shape and got.dtype == np.float32
    # bf16 keeps 8 bits of each product's operands: about 1 % of the output's spread
    assert _rms(got, want) < 0.02 * float(want.std())
    # each clip is its own: the second clip's row does not depend on the first
    np.testing.assert_allclose(Bf16Encoder(tiny_ct2_dir)(feats[1:]), got[1:], atol=1e-5)


@pytest.mark.slow
def test_on_whisper_base_it_is_closer_to_float32_than_int8(shared_data):
    """On real speech and the real weights: the reason it replaces the int8 encoder (besides
    speed) where the CPU has bf16. Measured 0.017 against 0.072 (root-mean-square)."""
    from whispertune.audio import load_audio
    from whispertune.backends.ct2 import CT2Transcriber

    model = CT2Transcriber("builtin:base", bf16_encoder=False)
    audio = load_audio(shared_data / "zh/aishell_s0150/clips/BAC009S0150W0441.opus")
    feats = model._features(audio)[None]
    float32 = _ct2_encode(model.model_dir, feats, "float32")
    bf16 = Bf16Encoder(model.model_dir)(feats)
    int8 = _ct2_encode(model.model_dir, feats, "int8")
    assert _rms(bf16, float32) < 0.5 * _rms(int8, float32)


def test_the_backend_encodes_in_bf16_where_the_cpu_has_it(tiny_ct2_dir, monkeypatch):
    from whispertune.backends import DecodeOptions
    from whispertune.backends import ct2 as ct2_backend

    monkeypatch.setattr(ct2_backend, "cpu_has_bf16", lambda: True)
    on = ct2_backend.CT2Transcriber(str(tiny_ct2_dir), threads=1)
    assert on._bf16_encoder is not None
    off = ct2_backend.CT2Transcriber(str(tiny_ct2_dir), threads=1, bf16_encoder=False)
    assert off._bf16_encoder is None
    for other in ("float32", "int8_float32"):  # asked for: CTranslate2's own encoder
        model = ct2_backend.CT2Transcriber(str(tiny_ct2_dir), threads=1, compute_type=other)
        assert model._bf16_encoder is None
    monkeypatch.setattr(ct2_backend, "cpu_has_bf16", lambda: False)
    assert ct2_backend.CT2Transcriber(str(tiny_ct2_dir), threads=1)._bf16_encoder is None
    # it decodes: CTranslate2's generate takes the encoder output
    audio = np.random.default_rng(1).standard_normal(16000 * 2).astype(np.float32) * 0.1
    out = on.transcribe_clips([audio], DecodeOptions(language="en", temperatures=[0.0]))
    assert len(out) == 1 and out[0].language == "en"
