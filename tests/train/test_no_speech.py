"""Generated no-speech clips: deterministic, quiet, reused, in both label forms."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from whispertune.data.manifest import Sample
from whispertune.train.no_speech import no_speech_samples


def test_clips_are_quiet_deterministic_and_reused(tmp_path):
    speech = [Sample(audio_path=Path("a.wav"), sentence="你好", language="Chinese")]
    first = no_speech_samples(8, tmp_path, speech)
    assert len(first) == 8
    assert all(s.is_no_speech and s.language == "Chinese" for s in first)
    # half in each label form
    assert sum(s.extra.get("no_speech_label") == "empty" for s in first) == 4
    levels = []
    for s in first:
        audio, rate = sf.read(s.audio_path, dtype="float32")
        assert rate == 16000 and 2.0 <= len(audio) / rate <= 30.0
        levels.append(float(np.sqrt(np.mean(audio**2))))
    silent = [i for i, x in enumerate(levels) if x == 0.0]  # digital silence
    assert silent == [0, 5]
    # ... in both label forms: the model alone on silence needs the empty transcript too
    assert {first[i].extra.get("no_speech_label") for i in silent} == {None, "empty"}
    noise = [x for i, x in enumerate(levels) if i not in silent]
    assert all(0 < x < 10 ** (-24 / 20) for x in noise)  # noise at -75..-25 dBFS
    stamp = first[3].audio_path.stat().st_mtime_ns
    again = no_speech_samples(8, tmp_path, speech)
    assert [s.audio_path for s in again] == [s.audio_path for s in first]
    assert first[3].audio_path.stat().st_mtime_ns == stamp  # not rewritten
    other = no_speech_samples(8, tmp_path / "other", speech)
    a, _ = sf.read(first[3].audio_path)
    b, _ = sf.read(other[3].audio_path)
    assert np.array_equal(a, b)  # same clip for the same index, wherever it is written
