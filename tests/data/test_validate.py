"""validate_manifest: every kind of broken line is found, with its line number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from whispertune.audio import AudioError
from whispertune.data.manifest import ManifestError, read_manifest
from whispertune.data.validate import (
    MAX_DECODER_TOKENS,
    ValidateOptions,
    load_tokenizer,
    measure_duration,
    text_tokens,
    validate_manifest,
)
from whispertune.errors import UserError


@pytest.fixture
def clips(tmp_path: Path, make_wav) -> dict[str, Path]:
    """Audio files of every kind a manifest can point at."""
    folder = tmp_path / "clips"
    good = make_wav(folder / "good.wav", 2.0)
    # copies, for manifests with several good lines (one file twice is a duplicate warning)
    make_wav(folder / "good2.wav", 2.0)
    make_wav(folder / "good3.wav", 2.0)
    long = make_wav(folder / "long.wav", 31.0, sample_rate=8000)
    no_samples = make_wav(folder / "no_samples.wav", 0.0)
    empty = folder / "empty.wav"
    empty.write_bytes(b"")
    text = folder / "text.wav"
    text.write_text("this is not audio\n")
    directory = folder / "dir.wav"
    directory.mkdir()
    return {
        "good": good,
        "long": long,
        "no_samples": no_samples,
        "empty": empty,
        "text": text,
        "dir": directory,
    }


def _tokens_text(n: int) -> str:
    """An English text of exactly ``n`` tokens ("hello" is 2 tokens, " hello" one)."""
    return "hello" + " hello" * (n - 2)


def _run(tmp_path: Path, make_manifest, lines: list, **options):
    manifest = make_manifest(tmp_path / "manifest.jsonl", lines)
    return validate_manifest(manifest, ValidateOptions(manifest=manifest, **options))


def _found(report) -> list[tuple[int, str, str]]:
    return [(p.line, p.severity, p.message) for p in report.problems]


GOOD = {"audio": {"path": "clips/good.wav"}, "sentence": "hello", "language": "English"}
GOOD2 = {**GOOD, "audio": {"path": "clips/good2.wav"}}
GOOD3 = {**GOOD, "audio": {"path": "clips/good3.wav"}}


def test_good_manifest_has_no_problems(tmp_path, clips, make_manifest):
    report = _run(tmp_path, make_manifest, [GOOD, {**GOOD2, "duration": 2.0}])
    assert report.problems == []
    assert report.ok
    assert report.lines == 2 and report.samples == 2
    assert report.summary().endswith("2 lines, 0 errors, 0 warnings")


# Each case: one manifest line and a piece of the message it must produce.
CASES = {
    "bad JSON": ('{"audio": {"path": "clips/good.wav"}, "sentence": ', "invalid JSON"),
    "not an object": ('["clips/good.wav", "hello"]', "expected a JSON object, got list"),
    "missing audio.path": ({"audio": {}, "sentence": "x"}, 'missing "audio"'),
    "audio file missing": ({**GOOD, "audio": {"path": "clips/nope.wav"}}, "audio file not found"),
    "audio not a file": ({**GOOD, "audio": {"path": "clips/dir.wav"}}, "not a file"),
    "not decodable": ({**GOOD, "audio": {"path": "clips/text.wav"}}, "cannot be decoded"),
    "0 bytes": ({**GOOD, "audio": {"path": "clips/empty.wav"}}, "empty (0 bytes)"),
    "0 samples": ({**GOOD, "audio": {"path": "clips/no_samples.wav"}}, "no samples"),
    "too long": ({**GOOD, "audio": {"path": "clips/long.wav"}}, "31 s long, more than"),
    "too many tokens": ({**GOOD, "sentence": _tokens_text(500)}, "text too long for the decoder"),
    "sentences out of order": (
        {
            **GOOD,
            "sentences": [
                {"start": 1.0, "end": 1.5, "text": "a"},
                {"start": 0.2, "end": 0.8, "text": "b"},
            ],
        },
        "sentences out of order: sentences[1] starts at 0.2",
    ),
    "sentence start >= end": (
        {**GOOD, "sentences": [{"start": 1.0, "end": 1.0, "text": "a"}]},
        "sentences[0] ends at 1, not after its start 1",
    ),
    "sentence beyond audio": (
        {**GOOD, "sentences": [{"start": 1.0, "end": 2.5, "text": "a"}]},
        "sentences[0] ends at 2.5, beyond the end of the audio (2 s)",
    ),
    "unknown language": ({**GOOD, "language": "Klingon"}, "unknown language 'Klingon'"),
    "start_time after end_time": (
        {**GOOD, "audio": {"path": "clips/good.wav", "start_time": 1.5, "end_time": 0.5}},
        "audio.end_time 0.5 is not after audio.start_time 1.5",
    ),
    "end_time beyond file": (
        {**GOOD, "audio": {"path": "clips/good.wav", "start_time": 0.5, "end_time": 3.0}},
        "audio.end_time 3 is beyond the end of the file (2 s)",
    ),
    "start_time beyond file": (
        {**GOOD, "audio": {"path": "clips/good.wav", "start_time": 2.5}},
        "audio.start_time 2.5 is beyond the end of the file",
    ),
    "negative start_time": (
        {**GOOD, "audio": {"path": "clips/good.wav", "start_time": -1}},
        "audio.start_time -1 is negative",
    ),
    "duration not a number": ({**GOOD, "duration": "long"}, '"duration" must be a number'),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_each_kind_of_error_is_reported_on_its_line(tmp_path, clips, make_manifest, kind):
    line, expected = CASES[kind]
    report = _run(tmp_path, make_manifest, [GOOD2, line, GOOD3])
    errors = [p for p in report.problems if p.severity == "error"]
    assert len(errors) == 1, _found(report)
    assert errors[0].line == 2
    assert expected in errors[0].message
    assert not report.ok
    assert str(errors[0]).startswith(f"{tmp_path / 'manifest.jsonl'}:2: error: ")


def test_all_problems_of_a_manifest_are_collected(tmp_path, clips, make_manifest):
    """One manifest with every kind of broken line: each named with its own line number."""
    kinds = list(CASES)
    lines = [GOOD2] + [CASES[k][0] for k in kinds] + [{**GOOD3, "duration": 9.0}]
    report = _run(tmp_path, make_manifest, lines)
    by_line: dict[int, list[str]] = {}
    for p in report.problems:
        by_line.setdefault(p.line, []).append(p.message)
    for offset, kind in enumerate(kinds):
        line = offset + 2
        assert any(CASES[kind][1] in m for m in by_line.get(line, [])), (kind, line, by_line)
    warning_line = len(lines)
    assert [p.severity for p in report.problems if p.line == warning_line] == ["warning"]
    assert 1 not in by_line
    assert len(report.errors) == len(kinds)
    # the cases that cut or reword clips/good.wav also repeat its audio: warned as such
    repeats = [w for w in report.warnings if "same audio as line" in w.message]
    assert len(report.warnings) == 1 + len(repeats)
    assert report.summary().endswith(
        f"{len(lines)} lines, {len(kinds)} errors, {1 + len(repeats)} warnings"
    )


def test_problems_on_one_line_are_all_reported(tmp_path, clips, make_manifest):
    line = {
        "audio": {"path": "clips/nope.wav"},
        "sentence": "x",
        "language": "Elvish",
        "sentences": [{"start": 2, "end": 1, "text": "x"}],
    }
    report = _run(tmp_path, make_manifest, [line])
    messages = " | ".join(p.message for p in report.problems)
    assert "unknown language 'Elvish'" in messages
    assert "audio file not found" in messages
    assert "sentences[0] ends at 1, not after its start 2" in messages
    assert {p.line for p in report.problems} == {1}


def test_bad_utf8_line_does_not_stop_validation(tmp_path, clips):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_bytes(
        json.dumps(GOOD).encode() + b"\n" + b'{"sentence": "\xff\xfe"}\n' + b"not json\n"
    )
    report = validate_manifest(manifest, ValidateOptions(manifest=manifest))
    assert [(p.line, p.message.split(" (")[0]) for p in report.problems] == [
        (2, "not UTF-8 text"),
        (3, "invalid JSON"),
    ]


def test_blank_lines_keep_real_line_numbers(tmp_path, clips, make_manifest):
    report = _run(tmp_path, make_manifest, [GOOD, "", "   ", {**GOOD2, "language": "xx"}])
    assert [p.line for p in report.problems] == [4]
    assert report.lines == 2


def test_duration_mismatch_is_a_warning_within_slack_is_not(tmp_path, clips, make_manifest):
    report = _run(
        tmp_path,
        make_manifest,
        [{**GOOD, "duration": 2.05}, {**GOOD2, "duration": 2.5}, {**GOOD3, "duration": 1.8}],
    )
    assert [(p.line, p.severity) for p in report.problems] == [(2, "warning"), (3, "warning")]
    assert "duration 2.5 disagrees with the audio (2 s)" in report.problems[0].message
    assert report.ok  # warnings alone do not fail


def test_duration_of_a_cut_is_its_span(tmp_path, clips, make_manifest):
    cut = {"start_time": 0.5, "end_time": 1.5}
    report = _run(
        tmp_path,
        make_manifest,
        [
            {**GOOD, "audio": {"path": "clips/good.wav", **cut}, "duration": 1.0},
            {**GOOD, "audio": {"path": "clips/good2.wav", **cut}, "duration": 2.0},
            {
                **GOOD,
                "audio": {"path": "clips/good3.wav", **cut},
                "sentences": [{"start": 0.0, "end": 1.5, "text": "x"}],
            },
        ],
    )
    assert [(p.line, p.severity) for p in report.problems] == [(2, "warning"), (3, "error")]
    assert "beyond the end of the audio (1 s)" in report.problems[1].message


def test_end_of_sentence_within_slack_is_accepted(tmp_path, clips, make_manifest):
    line = {**GOOD, "sentences": [{"start": 0.0, "end": 2.08, "text": "a"}]}
    assert _run(tmp_path, make_manifest, [line]).problems == []


def test_max_duration_option(tmp_path, clips, make_manifest):
    report = _run(tmp_path, make_manifest, [GOOD], max_duration=1.5)
    assert len(report.errors) == 1
    assert "more than --max-duration 1.5 s" in report.errors[0].message
    assert _run(
        tmp_path, make_manifest, [{**GOOD, "audio": {"path": "clips/long.wav"}}], max_duration=40
    ).ok


def test_token_limit_boundary_and_no_check_tokens(tmp_path, clips, make_manifest):
    tokenizer = load_tokenizer()
    assert tokenizer is not None
    fits = MAX_DECODER_TOKENS - 5
    assert text_tokens(tokenizer, _tokens_text(fits)) == fits
    report = _run(
        tmp_path,
        make_manifest,
        [{**GOOD, "sentence": _tokens_text(fits)}, {**GOOD2, "sentence": _tokens_text(fits + 1)}],
    )
    assert [p.line for p in report.problems] == [2]
    assert "449 tokens" in report.problems[0].message
    report = _run(
        tmp_path, make_manifest, [{**GOOD, "sentence": _tokens_text(600)}], check_tokens=False
    )
    assert report.problems == []


def test_timestamped_target_counts_timestamp_tokens(tmp_path, clips, make_manifest):
    # 440 text tokens fit as plain text (445 with specials) but not with 2 segments' timestamps.
    text = _tokens_text(441)
    assert _run(tmp_path, make_manifest, [{**GOOD, "sentence": text}]).ok
    half = [
        {"start": 0.0, "end": 0.9, "text": _tokens_text(220)},
        {"start": 1.0, "end": 1.9, "text": _tokens_text(221)},
    ]
    report = _run(tmp_path, make_manifest, [{**GOOD, "sentence": "", "sentences": half}])
    assert "text too long for the decoder" in report.errors[0].message


def test_explicit_tokenizer_path_must_exist(tmp_path, clips, make_manifest):
    with pytest.raises(UserError, match="tokenizer.json not found"):
        _run(tmp_path, make_manifest, [GOOD], tokenizer_json=tmp_path / "missing.json")


def test_missing_manifest_raises(tmp_path):
    with pytest.raises(ManifestError, match="manifest not found"):
        validate_manifest(tmp_path / "nope.jsonl")


def test_empty_manifest_is_a_warning(tmp_path):
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n")
    report = validate_manifest(manifest)
    assert [p.message for p in report.problems] == ["manifest has no samples"]
    assert str(report.problems[0]) == f"{manifest}: warning: manifest has no samples"


def test_fix_durations_writes_a_corrected_copy(tmp_path, clips, make_manifest):
    manifest = make_manifest(
        tmp_path / "manifest.jsonl",
        [{**GOOD, "duration": 5.0}, {**GOOD2, "extra": 1}, "{broken", {**GOOD3, "language": "xx"}],
    )
    before = manifest.read_bytes()
    out = tmp_path / "out" / "fixed.jsonl"
    report = validate_manifest(manifest, ValidateOptions(manifest=manifest, fix_durations=out))
    assert manifest.read_bytes() == before
    assert report.fixed_path == out and report.fixed_samples == 3
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["duration"] for r in rows] == [2.0, 2.0, 2.0]
    assert rows[1]["extra"] == 1
    assert rows[0]["audio"]["path"] == "../clips/good.wav"
    assert [s.audio_path.resolve() for s in read_manifest(out)] == [
        (clips["good"].parent / name).resolve() for name in ("good.wav", "good2.wav", "good3.wav")
    ]
    # the durations now agree; what is left is the line's unknown key, kept and named
    warnings = validate_manifest(out).warnings
    assert [(w.line, w.message.split(" (")[0]) for w in warnings] == [(2, "unknown key(s) 'extra'")]


def test_unknown_keys_without_a_transcript_are_an_error_not_a_no_speech_sample(
    tmp_path, clips, make_manifest, capsys
):
    """A manifest from another tool names its transcript "text": read as it stands, each line
    would be a no-speech sample and training would teach the model to write nothing."""
    from whispertune.cli import main

    audio = GOOD["audio"]
    manifest = make_manifest(
        tmp_path / "m.jsonl",
        [
            {"audio": audio, "text": "你好"},
            {"audio": audio, "transcript": "x", "speaker": "a"},
            {"audio": audio, "sentence": ""},  # an explicit no-speech sample is fine
            {"audio": audio, "sentence": "好", "duration": float("nan")},
        ],
    )
    assert main(["data", "validate", str(manifest)]) != 0
    err = capsys.readouterr()
    text = err.out + err.err
    assert f"{manifest}:1:" in text and "'text'" in text
    assert 'name the transcript "sentence"' in text
    assert f"{manifest}:2:" in text and "'speaker', 'transcript'" in text
    assert f"{manifest}:3:" not in text
    assert f"{manifest}:4:" in text and "finite" in text


def test_fix_durations_refuses_input_and_existing_output(tmp_path, clips, make_manifest):
    manifest = make_manifest(tmp_path / "manifest.jsonl", [{**GOOD, "duration": 5.0}])
    before = manifest.read_bytes()
    with pytest.raises(UserError, match="must not be the input"):
        validate_manifest(
            manifest, ValidateOptions(manifest=manifest, fix_durations=manifest, force=True)
        )
    existing = tmp_path / "fixed.jsonl"
    existing.write_text("keep me\n")
    with pytest.raises(UserError, match="already exists"):
        validate_manifest(manifest, ValidateOptions(manifest=manifest, fix_durations=existing))
    assert existing.read_text() == "keep me\n"
    validate_manifest(
        manifest, ValidateOptions(manifest=manifest, fix_durations=existing, force=True)
    )
    assert json.loads(existing.read_text())["duration"] == 2.0
    assert manifest.read_bytes() == before


def test_measure_duration_reads_headers_and_reasons(clips, make_wav, tmp_path):
    assert measure_duration(clips["good"]) == pytest.approx(2.0)
    assert measure_duration(make_wav(tmp_path / "a.flac", 1.25, sample_rate=22050)) == (
        pytest.approx(1.25, abs=1e-4)
    )
    for name, reason in [
        ("empty", "0 bytes"),
        ("no_samples", "no samples"),
        ("text", "cannot be decoded"),
        ("dir", "not a file"),
    ]:
        with pytest.raises(AudioError, match=reason):
            measure_duration(clips[name])


def test_real_speech_manifest_is_clean(shared_data):
    manifest = shared_data / "zh" / "aishell_s0150" / "manifest.jsonl"
    report = validate_manifest(manifest)
    assert report.lines == 376
    assert report.problems == []


def test_real_longform_manifest_is_too_long_for_training(shared_data):
    report = validate_manifest(shared_data / "longform" / "manifest.jsonl")
    messages = [p.message for p in report.errors]
    assert any("more than --max-duration 30 s" in m for m in messages)
    assert any("text too long for the decoder" in m for m in messages)
    assert not any("sentences" in m for m in messages)  # its timestamps are in order
