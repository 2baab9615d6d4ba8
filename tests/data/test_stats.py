"""manifest_stats: durations, histogram, languages, text lengths, timestamps."""

from __future__ import annotations

import json

import pytest

from whispertune.data.manifest import ManifestError
from whispertune.data.stats import format_stats, manifest_stats
from whispertune.data.validate import load_tokenizer, text_tokens


@pytest.fixture
def manifest(tmp_path, make_wav, make_manifest):
    make_wav(tmp_path / "clips" / "measured.wav", 4.0)
    lines = [
        {"audio": {"path": "a.wav"}, "sentence": "你好世界", "language": "Chinese", "duration": 3},
        {"audio": {"path": "b.wav"}, "sentence": "hello", "language": "English", "duration": 7},
        {"audio": {"path": "c.wav"}, "sentence": "", "language": "Chinese", "duration": 12},
        {"audio": {"path": "d.wav"}, "sentence": "ab", "duration": 30.0},
        {
            "audio": {"path": "e.wav"},
            "sentence": "",
            "language": "Chinese",
            "duration": 40,
            "sentences": [
                {"start": 0, "end": 10, "text": "x"},
                {"start": 20, "end": 30, "text": "y"},
            ],
        },
        # No duration: measured from the audio header.
        {"audio": {"path": "clips/measured.wav"}, "sentence": "abcdef", "language": "zh"},
    ]
    return make_manifest(tmp_path / "manifest.jsonl", lines)


def test_durations_and_histogram(manifest):
    stats = manifest_stats(manifest, tokens=False)
    assert stats.clips == 6
    assert stats.total_seconds == pytest.approx(96.0)
    assert stats.total_minutes == pytest.approx(1.6)
    assert stats.duration.min == 3 and stats.duration.max == 40
    assert stats.duration.mean == pytest.approx(16.0)
    assert stats.measured == 1 and stats.unmeasurable == 0
    # 3, 4 | 7 | 12 | 30 (fits Whisper's window) | 40
    assert stats.histogram == {"0-5 s": 2, "5-10 s": 1, "10-20 s": 1, "20-30 s": 1, ">30 s": 1}


def test_languages_texts_no_speech_and_timestamps(manifest):
    stats = manifest_stats(manifest, tokens=False)
    # "zh" and "Chinese" are one language.
    assert stats.languages == {"Chinese": 4, "(none)": 1, "English": 1}
    assert stats.chars_per_clip.min == 0 and stats.chars_per_clip.max == 6
    # texts: 4, 5, 0, 2, "xy" (joined sentences) 2, 6
    assert stats.chars_per_clip.mean == pytest.approx(19 / 6)
    assert stats.no_speech == 1  # c.wav; e.wav has text in its sentences
    assert stats.with_timestamps == 1
    assert stats.timestamped_seconds == 40
    assert stats.timestamp_coverage == pytest.approx(0.5)
    assert stats.tokens_per_clip is None


def test_token_counts_use_the_real_tokenizer(manifest):
    stats = manifest_stats(manifest)
    tokenizer = load_tokenizer()
    # The shortest target is the empty no-speech one: just the 5 special tokens.
    assert stats.tokens_per_clip.min == 5
    assert stats.tokens_per_clip.max >= 5 + text_tokens(tokenizer, "你好世界")


def test_unreadable_audio_without_duration_is_counted(tmp_path, make_manifest):
    manifest = make_manifest(
        tmp_path / "m.jsonl",
        [
            {"audio": {"path": "missing.wav"}, "sentence": "x", "language": "Klingon"},
            {"audio": "x.wav", "duration": 2},
        ],
    )
    stats = manifest_stats(manifest, tokens=False)
    assert stats.clips == 2 and stats.unmeasurable == 1
    assert stats.languages == {"(none)": 1, "Klingon": 1}
    assert stats.total_seconds == 2


def test_malformed_manifest_names_the_line(tmp_path, make_manifest):
    manifest = make_manifest(tmp_path / "m.jsonl", [{"audio": "a.wav"}, "[1]"])
    with pytest.raises(ManifestError, match=r"m\.jsonl:2: expected a JSON object"):
        manifest_stats(manifest, tokens=False)


def test_format_and_json(manifest):
    stats = manifest_stats(manifest, tokens=False)
    text = format_stats(stats)
    assert "clips:       6" in text
    assert "total:       0.03 h (1.6 min)" in text
    bars = {line.split()[0]: line for line in text.splitlines() if " s " in line and "#" in line}
    assert bars["0-5"].count("#") == 40 and bars["5-10"].count("#") == 20
    assert "languages:   Chinese 4, (none) 1, English 1" in text
    assert "timestamps:  1 clip (0.7 min of audio, 50.0% covered by segments)" in text
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["clips"] == 6 and data["histogram"][">30 s"] == 1
    assert data["duration"] == {"min": 3.0, "mean": 16.0, "max": 40.0}
    assert data["total_minutes"] == 1.6


def test_real_speech_manifest(shared_data):
    stats = manifest_stats(shared_data / "zh" / "aishell_s0150" / "manifest.jsonl")
    assert stats.clips == 376
    assert stats.total_minutes == pytest.approx(32.8, abs=0.05)
    assert stats.languages == {"Chinese": 376}
    assert stats.histogram[">30 s"] == 0 and sum(stats.histogram.values()) == 376
    assert 5 < stats.tokens_per_clip.min < stats.tokens_per_clip.max < 100
    assert stats.measured == 0  # every line has a duration


def test_real_longform_timestamps(shared_data):
    stats = manifest_stats(shared_data / "longform" / "manifest.jsonl", tokens=False)
    assert stats.with_timestamps == 1
    # 36 clips with 0.3-0.8 s of noise between them.
    assert 0.8 < stats.timestamp_coverage < 0.97
