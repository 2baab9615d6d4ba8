"""The per-clip language and prompt rules both backends take from backends.base."""

from __future__ import annotations

import numpy as np
import pytest

from whispertune.backends.base import ClipBatch, DecodeOptions, Transcriber, Transcript
from whispertune.backends.decoding import clip_duration, clip_languages, detect_missing_languages
from whispertune.errors import UserError


def test_clip_languages_prefer_the_clip_then_the_options():
    options = DecodeOptions(language="Chinese")
    assert clip_languages(options, None, 2) == ["zh", "zh"]
    assert clip_languages(options, ["en", None], 2) == ["en", "zh"]
    assert clip_languages(DecodeOptions(), None, 2) == [None, None]
    with pytest.raises(UserError):
        clip_languages(DecodeOptions(language="klingon"), None, 1)


def test_detection_runs_only_for_clips_without_a_language():
    calls = []

    def detect():
        calls.append(1)
        return [("de", 0.9), ("fr", 0.8)]

    assert detect_missing_languages(["en", "zh"], True, detect) == (["en", "zh"], [None, None])
    assert not calls
    assert detect_missing_languages(["en", None], True, detect) == (["en", "fr"], [None, 0.8])
    assert len(calls) == 1
    # an English-only model never detects
    assert detect_missing_languages([None], False, detect) == (["en"], [None])
    assert len(calls) == 1


def test_clip_duration_is_capped_at_the_window():
    assert clip_duration(np.zeros(8000, dtype=np.float32)) == 0.5
    assert clip_duration(np.zeros(16000 * 40, dtype=np.float32)) == 30.0


def test_initial_prompt_tokens_carry_whispers_leading_space():
    class Echo(Transcriber):
        def _transcribe_clips(self, batch, options):
            return []

        def _encode_clip(self, audio):
            return audio

        def _score_tokens(self, clip, prompt, seqs):
            return [0.0] * len(seqs)

        def encode_text(self, text):
            return [ord(c) for c in text]

    echo = Echo()
    assert echo.initial_prompt_tokens(DecodeOptions()) == []
    assert echo.initial_prompt_tokens(DecodeOptions(initial_prompt=" hi ")) == [32, 104, 105]


def test_a_batch_part_keeps_each_clips_language_and_context():
    audios = [np.zeros(10, dtype=np.float32) for _ in range(3)]
    batch = ClipBatch(audios, ["en", "zh", None], True, False, [[1], None, [2]], print)
    part = batch.part(1, 3)
    assert len(part) == 2 and list(part.languages) == ["zh", None]
    assert list(part.previous_tokens) == [None, [2]]
    assert part.timestamps and part.clip_done is None  # the caller reports its parts


def test_each_clip_is_reported_done_once_in_the_order_the_backend_finishes():
    class Backwards(Transcriber):
        def _transcribe_clips(self, batch, options):
            batch.clip_done(1)  # the second part finished first
            return [Transcript("a"), Transcript("b")]

        def _encode_clip(self, audio):
            return audio

        def _score_tokens(self, clip, prompt, seqs):
            return [0.0] * len(seqs)

        def encode_text(self, text):
            return []

    done = []
    clip = np.zeros(10, dtype=np.float32)
    Backwards().transcribe_clips([clip, clip], DecodeOptions(), on_clip_done=done.append)
    assert done == [1, 0]
