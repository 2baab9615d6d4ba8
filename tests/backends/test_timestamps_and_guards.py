"""Backend-independent decoding rules: timestamp parsing, hallucination guards, and the CT2
backend's features and batched temperature fallback on a tiny model."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from whispertune.backends.base import DecodeOptions, join_texts
from whispertune.backends.decoding import (
    compression_ratio,
    is_silence,
    needs_fallback,
    normalized_guards,
    split_timestamped,
)
from whispertune.errors import UserError

TS = 50364  # <|0.00|> in the multilingual vocabulary
EOT = 50257


def ts(seconds: float) -> int:
    return TS + round(seconds / 0.02)


def decode(ids):
    return "".join(chr(ord("a") + i % 26) for i in ids)


def test_pairs_close_segments_and_single_ending_consumes_window():
    tokens = [ts(0), 1, 2, ts(2), ts(2.5), 3, ts(4), EOT]
    segs, consumed = split_timestamped(tokens, TS, EOT, 30.0, decode)
    assert [(s.start, s.end, s.tokens, s.final) for s in segs] == [
        (0.0, 2.0, [1, 2], True),
        (2.5, 4.0, [3], True),
    ]
    assert consumed == 30.0  # speech ended inside the window


def test_unfinished_last_sentence_is_marked_and_not_consumed():
    tokens = [ts(0), 1, ts(3), ts(3), 2, 3, EOT]
    segs, consumed = split_timestamped(tokens, TS, EOT, 30.0, decode)
    assert consumed == 3.0
    assert [(s.start, s.end, s.final) for s in segs] == [(0.0, 3.0, True), (3.0, 30.0, False)]


def test_no_timestamps_and_clamping():
    segs, consumed = split_timestamped([1, 2, EOT], TS, EOT, 7.5, decode)
    assert [(s.start, s.end) for s in segs] == [(0.0, 7.5)] and consumed == 7.5
    # a timestamp past the clip's end is clamped to it
    segs, _ = split_timestamped([ts(0), 1, ts(29.0)], TS, EOT, 10.0, decode)
    assert segs[0].end == 10.0
    # a window stuck at 0 never makes the caller stand still
    segs, consumed = split_timestamped([ts(0), ts(0), 1], TS, EOT, 12.0, decode)
    assert consumed == 12.0


def test_compression_ratio_flags_loops():
    assert compression_ratio("") == 0.0
    assert compression_ratio("the cat sat on the mat") < 1.5
    assert compression_ratio("你别忘了" * 30) > 2.4


def test_fallback_and_silence_rules_follow_whisper():
    o = DecodeOptions()
    assert needs_fallback(o, 3.0, -0.2, 0.01)  # loop
    assert needs_fallback(o, 1.0, -1.5, 0.01)  # improbable
    assert not needs_fallback(o, 1.0, -1.5, 0.9)  # silence: no hotter decode
    assert is_silence(o, -1.5, 0.9)
    assert not is_silence(o, -0.3, 0.9)  # confident text despite the no-speech token
    off = normalized_guards(
        DecodeOptions(no_speech_threshold=float("inf"), log_prob_threshold=float("-inf"))
    )
    assert off.no_speech_threshold is None and off.log_prob_threshold is None
    assert not is_silence(off, -5.0, 0.99) and not needs_fallback(off, 1.0, -5.0, 0.99)
    with pytest.raises(UserError, match="temperatures"):
        normalized_guards(DecodeOptions(temperatures=[-1.0]))


def test_join_texts_spaces_only_between_latin_words():
    joined = join_texts([" Hello there.", " General", "你好", "世界"])
    assert joined == "Hello there. General你好世界"


@pytest.fixture(scope="module")
def tiny_ct2(tiny_ct2_dir):
    from whispertune.backends import create_transcriber

    return create_transcriber(str(tiny_ct2_dir), "ct2", compute_type="float32", threads=1)


def test_features_equal_transforming_the_padded_audio(tiny_ct2):
    fe = tiny_ct2.feature_extractor
    rng = np.random.default_rng(0)
    for n in (1, 16000 * 5 + 37, 16000 * 30, 16000 * 31):
        audio = (rng.standard_normal(n) * 0.1).astype(np.float32)
        ref = fe(audio[: 16000 * 30], padding=480000)[:, :3000]
        assert np.abs(tiny_ct2._features(audio) - ref).max() < 1e-5


def test_fallback_redecodes_only_failing_clips_and_keeps_best(tiny_ct2):
    rng = np.random.default_rng(1)
    clips = [(rng.standard_normal(16000 * 2) * 0.1).astype(np.float32) for _ in range(3)]
    base = dict(language="zh", beam_size=1, max_new_tokens=6)
    # every output fails the log-prob check: each clip goes through every temperature
    always = DecodeOptions(**base, temperatures=[0.0, 0.5, 1.0], log_prob_threshold=0.0,
                           no_speech_threshold=None, best_of=2)
    out = tiny_ct2.transcribe_clips(clips, always)
    assert [t.temperature for t in out] == [1.0, 1.0, 1.0]
    never = DecodeOptions(**base, temperatures=[0.0, 0.5], log_prob_threshold=float("-inf"),
                          compression_ratio_threshold=float("inf"))
    out = tiny_ct2.transcribe_clips(clips, never, timestamps=True)
    assert [t.temperature for t in out] == [0.0, 0.0, 0.0]
    assert all(t.avg_logprob is not None and t.no_speech_prob is not None for t in out)


def test_score_tokens_takes_audio_or_the_decodes_encoding(tiny_ct2):
    """Rescoring's one acoustic method: the same scores from raw audio as from the encoder
    output a decode keeps, one per sequence; on the CPU each is its tokens' log-probabilities
    and then the end of text's, and a sequence that starts like another has its terms there."""
    rng = np.random.default_rng(2)
    audio = (rng.standard_normal(16000 * 3) * 0.1).astype(np.float32)
    tk = tiny_ct2._tokenizer("zh", "transcribe")
    prompt = [*tk.sot_sequence, tk.no_timestamps]
    seqs = [[100, 200], [100, 200, 300], [5]]
    from_audio = tiny_ct2.score_tokens(audio, prompt, seqs)
    from_encoding = tiny_ct2.score_tokens(tiny_ct2._encode_clip(audio), prompt, seqs)
    assert from_audio == pytest.approx(from_encoding) and len(from_audio) == 3
    assert all(s < 0 for s in from_audio)
    assert tiny_ct2.scores_end_of_text
    terms = tiny_ct2.token_logprobs(audio, prompt, seqs)
    assert [len(t) for t in terms] == [3, 4, 2]  # each token, then the end of text
    assert from_audio == pytest.approx([float(t.sum()) for t in terms])
    np.testing.assert_allclose(terms[1][:2], terms[0][:2], atol=1e-5)  # the same start


def test_rescoring_loads_in_the_background_for_mandarin_only(tiny_ct2_dir):
    """The first batch to be rescored starts loading rescoring (the decoder scorer, the word
    model) in a thread of its own, so that no worker waits on it at its first clip; a batch
    that will not be rescored loads nothing."""
    from whispertune.backends import create_transcriber

    model = create_transcriber(str(tiny_ct2_dir), "ct2", compute_type="float32", threads=1)
    audio = np.zeros(16000, np.float32)
    opts = DecodeOptions(beam_size=1, max_new_tokens=4, temperatures=[0.0])
    model.transcribe_clips([audio], replace(opts, language="en"))
    model.transcribe_clips([audio], replace(opts, language="zh", rescore=False))
    assert model._warm_up is None
    model.transcribe_clips([audio], replace(opts, language="zh"))
    assert model._warm_up is not None
    model._warm_up.join(timeout=120)
    assert model._scorer is not None
    started = model._warm_up
    model.transcribe_clips([audio], replace(opts, language="zh"))
    assert model._warm_up is started  # once per transcriber
