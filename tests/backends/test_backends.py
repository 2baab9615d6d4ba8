"""Both backends decode the same way: same greedy text at the same precision, and language
detection with a probability."""

from __future__ import annotations

import pytest

from whispertune.audio import load_audio
from whispertune.backends import DecodeOptions, create_transcriber
from whispertune.errors import UserError


@pytest.fixture(scope="module")
def clips(shared_data):
    names = ["BAC009S0150W0445", "BAC009S0150W0450", "BAC009S0150W0455"]
    return [load_audio(shared_data / f"zh/aishell_s0150/clips/{n}.opus") for n in names]


@pytest.mark.slow
def test_ct2_and_transformers_agree_at_float32(clips):
    # the decode itself (rescoring, which scores candidates each its own way, off)
    opts = DecodeOptions(language="zh", beam_size=1, rescore=False)
    ct2 = create_transcriber("builtin:base", "ct2", compute_type="float32")
    hf = create_transcriber("builtin:base", "transformers", compute_type="float32")
    a = ct2.transcribe_clips(clips, opts)
    b = hf.transcribe_clips(clips, opts)
    assert [t.tokens for t in a] == [t.tokens for t in b]
    assert all(len(t.text) > 3 for t in a)


@pytest.mark.slow
def test_language_detection_reports_probability(clips, shared_data):
    ct2 = create_transcriber("builtin:base", "ct2")
    english = load_audio(shared_data / "en/jfk/jfk.flac")
    out = ct2.transcribe_clips([clips[0], english], DecodeOptions(beam_size=1))
    assert [t.language for t in out] == ["zh", "en"]
    assert all(0.5 < t.language_probability <= 1.0 for t in out)
    assert "country" in out[1].text


def test_unknown_backend_and_language():
    with pytest.raises(UserError, match="unknown backend"):
        create_transcriber("builtin:base", "onnx")
    from whispertune.languages import language_code

    with pytest.raises(UserError, match="unknown language 'Klingon'"):
        language_code("Klingon")


@pytest.mark.slow
def test_both_backends_give_the_same_timestamped_segments(shared_data):
    """Timestamp decoding: transformers' generate(return_timestamps) and our CTranslate2
    parsing of timestamp tokens give the same segments at float32, greedy."""
    english = load_audio(shared_data / "en/jfk/jfk.flac")
    opts = DecodeOptions(language="en", beam_size=1, temperatures=[0.0])
    ct2 = create_transcriber("builtin:base", "ct2", compute_type="float32")
    hf = create_transcriber("builtin:base", "transformers", compute_type="float32")
    a = ct2.transcribe_clips([english], opts, timestamps=True)[0]
    b = hf.transcribe_clips([english], opts, timestamps=True)[0]
    assert [(s.start, s.end, s.text.strip()) for s in a.segments] == [
        (s.start, s.end, s.text.strip()) for s in b.segments
    ]
    assert a.segments and a.segments[0].start < 0.5 and "country" in a.text
