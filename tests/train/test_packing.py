"""Packed training windows: consecutive clips joined, audio and timestamped labels aligned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.train.conftest import write_manifest
from tests.train.test_training import _opts
from whispertune.audio import SAMPLE_RATE, load_audio
from whispertune.data.manifest import Sample, Segment, read_manifest
from whispertune.train import train
from whispertune.train.dataset import SpeechDataset
from whispertune.train.labels import SpecialTokens, build_labels
from whispertune.train.packing import GAPS, PARTS, join, pack_samples


def _sample(i: int, text: str = "", language: str = "Chinese", **kw) -> Sample:
    return Sample(audio_path=f"/a/{i}.wav", sentence=text, language=language, line=i + 1, **kw)


def test_consecutive_clips_join_within_the_window_and_keep_their_order():
    samples = [_sample(i, f"句{i}") for i in range(40)]
    durations = [3.0 + (i % 4) for i in range(40)]
    packed = pack_samples(samples, durations, [10] * 40, 30.0, 448, seed=1)
    joined = [p for p in packed if PARTS in p.extra]
    assert joined and len(packed) < 40
    flat = [part for p in packed for part in p.extra.get(PARTS, [p])]
    assert flat == samples  # every clip once, in manifest order
    for p in joined:
        parts = p.extra[PARTS]
        assert p.duration <= 30.0
        assert p.sentence == "".join(x.sentence for x in parts)  # no spaces in Chinese
        # each part's text sits at its own offset in the window
        offset = 0.0
        for part, seg in zip(parts, p.sentences, strict=True):
            d = durations[samples.index(part)]
            assert seg == Segment(offset, offset + d, part.sentence)
            offset += d
    # the same seed packs the same way (the encoder cache depends on it)
    again = pack_samples(samples, durations, [10] * 40, 30.0, 448, seed=1)
    assert [p.sentence for p in again] == [p.sentence for p in packed]


def test_pauses_sit_between_clips_and_count_against_the_window():
    samples = [_sample(i, f"句{i}") for i in range(60)]
    durations = [2.0 + (i % 3) for i in range(60)]
    packed = pack_samples(samples, durations, [10] * 60, 30.0, 448, seed=3, max_pause=1.0)
    joined = [p for p in packed if PARTS in p.extra]
    assert joined
    flat = [part for p in packed for part in p.extra.get(PARTS, [p])]
    assert flat == samples
    all_gaps = [g for p in joined for g in p.extra[GAPS]]
    assert all(0.0 <= g <= 1.0 for g in all_gaps) and len(set(all_gaps)) > 5  # drawn, not fixed
    for p in joined:
        parts, gaps = p.extra[PARTS], p.extra[GAPS]
        assert len(gaps) == len(parts) - 1
        lengths = [durations[samples.index(x)] for x in parts]
        assert p.duration == pytest.approx(sum(lengths) + sum(gaps)) and p.duration <= 30.0
        # each text starts after the clips and the pauses before it
        for k, seg in enumerate(p.sentences):
            assert seg.start == pytest.approx(sum(lengths[:k]) + sum(gaps[:k]))
            assert seg.end - seg.start == pytest.approx(lengths[k])
    # without pauses: the windows of runs made before --pack-pause, back to back
    plain = pack_samples(samples, durations, [10] * 60, 30.0, 448, seed=3)
    again = pack_samples(samples, durations, [10] * 60, 30.0, 448, seed=3, max_pause=0.0)
    assert [p.sentence for p in plain] == [p.sentence for p in again]
    assert all(set(p.extra.get(GAPS, [0.0])) <= {0.0} for p in plain)


def test_no_speech_language_change_and_label_budget_break_a_window():
    samples = [_sample(0, "一"), _sample(1, ""), _sample(2, "二"), _sample(3, "three", "en")]
    samples += [_sample(4, "四"), _sample(5, "五")]
    packed = pack_samples(samples, [1.0] * 6, [10] * 6, 30.0, 448, seed=0)
    for p in packed:
        parts = p.extra.get(PARTS, [p])
        assert len({x.language for x in parts}) == 1
        assert not (len(parts) > 1 and any(x.is_no_speech for x in parts))
    tight = pack_samples(samples[4:], [1.0, 1.0], [230, 230], 30.0, 448, seed=0)
    assert len(tight) == 2  # 2 x (230 + 2 timestamps) > 448


def _three_clips_joined(tiny_model, tmp_path):
    """Three clips joined into one window, and the processor that makes their labels."""
    from whispertune.models.loading import load_processor
    from whispertune.models.sources import resolve

    manifest = write_manifest(tmp_path / "m.jsonl", 3)
    samples = read_manifest(manifest)
    window = join(samples, [s.duration for s in samples])
    processor = load_processor(resolve(str(tiny_model)))
    special = SpecialTokens.from_tokenizer(processor.tokenizer)
    return manifest, samples, window, processor, special


def test_window_audio_is_the_clips_back_to_back_and_labels_are_timestamped(tiny_model, tmp_path):
    manifest, _, window, processor, special = _three_clips_joined(tiny_model, tmp_path)
    parts = window.extra[PARTS]
    tok = processor.tokenizer
    o = _opts(tiny_model, manifest, tmp_path / "run", timestamps=True, timestamp_ratio=1.0)
    ds = SpeechDataset([window], processor.feature_extractor, tok, special, o)
    audio = ds.audio(0)
    expected = np.concatenate([load_audio(p.audio_path) for p in parts])
    np.testing.assert_array_equal(audio, expected)
    labels = ds.labels(0)
    # <|zh|> <|transcribe|> <|t0|> text0 <|t1|> <|t1|> text1 <|t2|> ... <|eot|>
    stamps = [i for i in labels if i >= special.timestamp_begin]
    assert len(stamps) == 2 * len(parts)
    second_start = round(len(load_audio(parts[0].audio_path)) / SAMPLE_RATE / 0.02) * 0.02
    assert abs((stamps[2] - special.timestamp_begin) * 0.02 - second_start) < 0.05
    assert labels == build_labels(window, tok, special, language="Chinese", timestamps=True)


def test_window_audio_has_silence_of_each_pause_and_the_cache_key_sees_it(tiny_model, tmp_path):
    from whispertune.train.encoder_cache import cache_key

    manifest, samples, window, processor, special = _three_clips_joined(tiny_model, tmp_path)
    paused = join(samples, [s.duration for s in samples], [0.5, 0.25])
    o = _opts(tiny_model, manifest, tmp_path / "run")
    ds = SpeechDataset([paused], processor.feature_extractor, processor.tokenizer, special, o)
    clips = [load_audio(p.audio_path) for p in samples]
    silence = [np.zeros(round(g * SAMPLE_RATE), dtype=np.float32) for g in (0.5, 0.25)]
    expected = np.concatenate([clips[0], silence[0], clips[1], silence[1], clips[2]])
    np.testing.assert_array_equal(ds.audio(0), expected[: 30 * SAMPLE_RATE])
    # a cached encoder output of the back-to-back window must not serve the paused one
    assert cache_key(tmp_path, [paused], 80) != cache_key(tmp_path, [window], 80)


def test_by_default_joined_windows_train_both_forms_and_single_clips_stay_plain(
    tiny_model, tmp_path
):
    manifest, samples, window, processor, special = _three_clips_joined(tiny_model, tmp_path)
    o = _opts(tiny_model, manifest, tmp_path / "run")  # the recipe's target defaults
    ds = SpeechDataset(
        [window] * 40 + samples, processor.feature_extractor, processor.tokenizer, special, o
    )
    forms = [special.no_timestamps in ds.labels(i) for i in range(40)]
    # about half of the windows timestamped (Whisper's long-form form), half plain
    assert 10 <= forms.count(False) <= 30 and 10 <= forms.count(True) <= 30
    for i in range(40, 43):  # clips without segment times: plain text only
        labels = ds.labels(i)
        assert special.no_timestamps in labels
        assert not [t for t in labels if t >= special.timestamp_begin]


@pytest.mark.parametrize("scope", ["encoder", "all"])
def test_training_on_packed_windows(tiny_model, tmp_path, monkeypatch, scope):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    manifest = write_manifest(tmp_path / "m.jsonl", 12)
    o = _opts(
        tiny_model,
        manifest,
        tmp_path / "run",
        max_steps=2,
        pack_seconds=30.0,
        no_speech_mix=0.0,
        holdout=0.0,
        lora_scope=scope,
        encoder_layers=1 if scope == "encoder" else None,
    )
    result = train(o)
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert result.steps == 2
    assert run["train_samples"] < 12  # windows, not clips
    assert run["encoder_cache"] == (scope == "encoder")
