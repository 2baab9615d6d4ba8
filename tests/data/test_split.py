"""split_manifest: deterministic, disjoint, relative paths, never overwrites silently."""

from __future__ import annotations

import json

import pytest

from whispertune.data.manifest import read_manifest
from whispertune.data.split import SplitOptions, split_manifest, split_samples
from whispertune.errors import UserError


@pytest.fixture
def manifest(tmp_path, make_manifest):
    lines = [
        {"audio": {"path": f"clips/{i:03d}.wav"}, "sentence": f"s{i}", "speaker": f"spk{i % 7}"}
        for i in range(50)
    ]
    return make_manifest(tmp_path / "data" / "manifest.jsonl", lines)


def _split(manifest, tmp_path, name="a", **kwargs):
    options = SplitOptions(
        manifest=manifest,
        train=tmp_path / name / "train.jsonl",
        test=tmp_path / name / "test.jsonl",
        **kwargs,
    )
    result = split_manifest(options)
    return result, read_manifest(result.train_path), read_manifest(result.test_path)


def _texts(samples):
    return [s.sentence for s in samples]


def test_same_seed_same_split_other_seed_other_split(manifest, tmp_path):
    _, train_a, test_a = _split(manifest, tmp_path, "a", seed=3)
    _, train_b, test_b = _split(manifest, tmp_path, "b", seed=3)
    _, train_c, test_c = _split(manifest, tmp_path, "c", seed=4)
    assert _texts(test_a) == _texts(test_b) and _texts(train_a) == _texts(train_b)
    assert (tmp_path / "a" / "test.jsonl").read_bytes() == (
        tmp_path / "b" / "test.jsonl"
    ).read_bytes()
    assert _texts(test_a) != _texts(test_c)


def test_sizes_disjoint_complete_and_in_input_order(manifest, tmp_path):
    result, train, test = _split(manifest, tmp_path, ratio=0.9)
    assert (result.train, result.test) == (45, 5)
    assert (len(train), len(test)) == (45, 5)
    assert set(_texts(train)).isdisjoint(_texts(test))
    assert set(_texts(train)) | set(_texts(test)) == {f"s{i}" for i in range(50)}
    index = {f"s{i}": i for i in range(50)}
    for part in (train, test):
        order = [index[t] for t in _texts(part)]
        assert order == sorted(order)


def test_paths_are_relative_to_each_output(manifest, tmp_path):
    result, train, _ = _split(manifest, tmp_path, "out/deeper")
    first = json.loads(result.train_path.read_text().splitlines()[0])
    assert first["audio"]["path"].startswith("../../data/clips/")
    assert first["speaker"].startswith("spk")  # extra fields survive
    source = {s.sentence: s.audio_path for s in read_manifest(manifest)}
    assert all(s.audio_path.resolve() == source[s.sentence].resolve() for s in train)


def test_refuses_to_overwrite_without_force(manifest, tmp_path):
    _split(manifest, tmp_path, seed=0)
    test_file = tmp_path / "a" / "test.jsonl"
    before = test_file.read_bytes()
    with pytest.raises(UserError, match="already exists; pass --force"):
        _split(manifest, tmp_path, seed=1)
    assert test_file.read_bytes() == before
    _split(manifest, tmp_path, seed=1, force=True)
    assert test_file.read_bytes() != before


def test_refuses_input_or_same_file_as_output(manifest, tmp_path):
    with pytest.raises(UserError, match="must not be the input"):
        split_manifest(
            SplitOptions(manifest=manifest, train=manifest, test=tmp_path / "t.jsonl", force=True)
        )
    with pytest.raises(UserError, match="must be different"):
        split_manifest(
            SplitOptions(manifest=manifest, train=tmp_path / "x.jsonl", test=tmp_path / "x.jsonl")
        )


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_bad_ratio(manifest, tmp_path, ratio):
    with pytest.raises(UserError, match="--ratio must be between 0 and 1"):
        _split(manifest, tmp_path, ratio=ratio)


def test_both_sides_never_empty():
    samples = read_manifest_like(3)
    train, test = split_samples(samples, ratio=0.99)
    assert (len(train), len(test)) == (2, 1)
    train, test = split_samples(samples, ratio=0.01)
    assert (len(train), len(test)) == (1, 2)
    with pytest.raises(UserError, match="at least 2 samples"):
        split_samples(samples[:1])


def read_manifest_like(n):
    from pathlib import Path

    from whispertune.data.manifest import Sample

    return [Sample(audio_path=Path(f"/a/{i}.wav"), sentence=str(i)) for i in range(n)]


def test_by_field_keeps_groups_together(manifest, tmp_path):
    _, train, test = _split(manifest, tmp_path, ratio=0.7, by="speaker")
    train_speakers = {s.extra["speaker"] for s in train}
    test_speakers = {s.extra["speaker"] for s in test}
    assert train_speakers.isdisjoint(test_speakers)
    assert train_speakers | test_speakers == {f"spk{i}" for i in range(7)}
    assert test


def test_by_audio_keeps_cuts_of_one_file_together(tmp_path, make_manifest):
    lines = [
        {"audio": {"path": f"long{i // 4}.wav", "start_time": i % 4, "end_time": i % 4 + 1}}
        for i in range(40)
    ]
    manifest = make_manifest(tmp_path / "m.jsonl", lines)
    _, train, test = _split(manifest, tmp_path, by="audio", ratio=0.5)
    assert {s.audio_path.name for s in train}.isdisjoint({s.audio_path.name for s in test})
    assert len(train) % 4 == 0 and len(test) % 4 == 0 and len(test) > 0


def test_by_with_a_single_value_cannot_split(manifest, tmp_path):
    with pytest.raises(UserError, match="at least 2 distinct values of 'speaker'"):
        split_samples(read_manifest(manifest)[:1] * 3, by="speaker")
    # Samples without the field are groups of their own.
    train, test = split_samples(read_manifest(manifest)[:3], by="nothing", ratio=0.5)
    assert len(train) + len(test) == 3 and train and test


def test_real_speech_manifest(shared_data, tmp_path):
    source = shared_data / "zh" / "aishell_s0150" / "manifest.jsonl"
    result, train, test = _split(source, tmp_path, ratio=0.85, seed=0)
    assert (result.train, result.test) == (320, 56)
    assert all(s.audio_path.is_file() for s in test)
