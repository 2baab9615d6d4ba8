"""Decoder targets checked token by token against the tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from whispertune.data.manifest import Sample, Segment
from whispertune.errors import UserError
from whispertune.models.builtin import builtin_tokenizer_file
from whispertune.models.ct2_import import build_tokenizer
from whispertune.train.labels import SpecialTokens, build_labels


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(builtin_tokenizer_file("base"), 51865)


@pytest.fixture(scope="module")
def special(tok):
    return SpecialTokens.from_tokenizer(tok)


def ids(tok, *tokens):
    return [tok.convert_tokens_to_ids(t) for t in tokens]


def test_special_ids_come_from_the_tokenizer(tok, special):
    assert special.sot == tok.convert_tokens_to_ids("<|startoftranscript|>") == 50258
    assert special.eot == 50257 and special.no_timestamps == 50363
    assert special.timestamp_begin == 50364 and special.no_speech == 50362
    assert special.languages["zh"] == 50260 and special.multilingual


def test_plain_mandarin(tok, special):
    s = Sample(Path("a.wav"), sentence="你好世界", language="Chinese")
    labels = build_labels(s, tok, special, language=None)
    text = tok.encode("你好世界", add_special_tokens=False)
    assert labels == ids(tok, "<|zh|>", "<|transcribe|>", "<|notimestamps|>") + text + [50257]


def test_english_text_gets_whispers_leading_space(tok, special):
    s = Sample(Path("a.wav"), sentence="Hello world")
    labels = build_labels(s, tok, special, language="en", task="translate")
    assert labels[:3] == ids(tok, "<|en|>", "<|translate|>", "<|notimestamps|>")
    assert labels[3:-1] == tok.encode(" Hello world", add_special_tokens=False)
    assert tok.decode(labels[3:-1]) == " Hello world"


def test_timestamped_targets_snap_to_20ms(tok, special):
    s = Sample(
        Path("a.wav"),
        sentence="",
        language="zh",
        sentences=[Segment(0.0, 1.234, "你好"), Segment(1.5, 2.999, "世界")],
    )
    labels = build_labels(s, tok, special, language=None, timestamps=True)
    t = special.timestamp_begin
    expected = (
        ids(tok, "<|zh|>", "<|transcribe|>")
        + [t]
        + tok.encode("你好", add_special_tokens=False)
        + [t + 62]
        + [t + 75]
        + tok.encode("世界", add_special_tokens=False)
        + [t + 150]
        + [50257]
    )
    assert labels == expected
    assert tok.convert_ids_to_tokens([t + 62, t + 150]) == ["<|1.24|>", "<|3.00|>"]
    # the same sample without timestamps: plain text of the segments
    plain = build_labels(s, tok, special, language=None, timestamps=False)
    assert plain[2] == special.no_timestamps
    assert tok.decode(plain[3:-1]) == "你好世界"


def test_no_speech_sample(tok, special):
    s = Sample(Path("a.wav"), sentence="  ", language="zh")
    assert s.is_no_speech
    assert build_labels(s, tok, special, language="zh") == [special.no_speech, special.eot]


def test_missing_language_for_multilingual_model(tok, special):
    with pytest.raises(UserError, match="language is needed"):
        build_labels(Sample(Path("a.wav"), sentence="x"), tok, special, language=None)


def test_generated_no_speech_clip_in_empty_transcript_form(tok, special):
    s = Sample(audio_path=Path("n.flac"), sentence="", extra={"no_speech_label": "empty"})
    labels = build_labels(s, tok, special, language="Chinese")
    assert tok.convert_ids_to_tokens(labels) == [
        "<|zh|>",
        "<|transcribe|>",
        "<|notimestamps|>",
        "<|endoftext|>",
    ]
