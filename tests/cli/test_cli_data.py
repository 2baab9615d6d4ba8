"""``whispertune data ...`` through the real entry point: output and exit codes."""

from __future__ import annotations

import json

import pytest

from whispertune.cli import main


@pytest.fixture
def clip(tmp_path, make_wav):
    return make_wav(tmp_path / "clips" / "a.wav", 2.0)


GOOD = {"audio": {"path": "clips/a.wav"}, "sentence": "hello", "language": "English"}


def test_validate_broken_manifest(tmp_path, clip, make_manifest, capsys, make_wav):
    make_wav(tmp_path / "clips" / "b.wav", 2.0)
    manifest = make_manifest(
        tmp_path / "m.jsonl",
        [
            GOOD,
            "{oops",
            {**GOOD, "audio": {"path": "clips/none.wav"}},
            {**GOOD, "audio": {"path": "clips/b.wav"}, "language": "Klingon", "duration": 9},
        ],
    )
    assert main(["data", "validate", str(manifest)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{manifest}:2: error: invalid JSON")
    assert out[1].startswith(f"{manifest}:3: error: audio file not found")
    assert out[2] == (
        f"{manifest}:4: error: unknown language 'Klingon' (use a Whisper language name or "
        "code such as Chinese, English, zh, en)"
    )
    assert out[3].startswith(f"{manifest}:4: warning: duration 9 disagrees with the audio (2 s)")
    assert out[4] == f"{manifest}: 4 lines, 3 errors, 1 warning"
    assert len(out) == 5


def test_validate_clean_manifest_exits_0(tmp_path, clip, make_manifest, capsys, make_wav):
    make_wav(tmp_path / "clips" / "b.wav", 2.0)
    b = {**GOOD, "audio": {"path": "clips/b.wav"}, "duration": 2.0}
    manifest = make_manifest(tmp_path / "m.jsonl", [GOOD, b])
    assert main(["data", "validate", str(manifest), "--no-check-tokens"]) == 0
    assert capsys.readouterr().out == f"{manifest}: 2 lines, 0 errors, 0 warnings\n"


def test_validate_warning_only_exits_0_and_fix_durations(tmp_path, clip, make_manifest, capsys):
    manifest = make_manifest(tmp_path / "m.jsonl", [{**GOOD, "duration": 7.5}])
    out = tmp_path / "fixed.jsonl"
    assert main(["data", "validate", str(manifest), "--fix-durations", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"{manifest}:1: warning: duration 7.5" in printed
    assert f"wrote 1 samples with measured durations to {out}" in printed
    assert json.loads(out.read_text())["duration"] == 2.0
    # Again: OUT exists now.
    assert main(["data", "validate", str(manifest), "--fix-durations", str(out)]) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert main(["data", "validate", str(manifest), "--fix-durations", str(manifest)]) == 2
    assert "must not be the input manifest" in capsys.readouterr().err
    assert json.loads(manifest.read_text())["duration"] == 7.5


def test_validate_max_duration_flag(tmp_path, clip, make_manifest, capsys):
    manifest = make_manifest(tmp_path / "m.jsonl", [GOOD])
    assert main(["data", "validate", str(manifest), "--max-duration", "1"]) == 1
    assert f"{manifest}:1: error: audio is 2 s long, more than --max-duration 1 s" in (
        capsys.readouterr().out
    )


def test_validate_missing_manifest(tmp_path, capsys):
    assert main(["data", "validate", str(tmp_path / "none.jsonl")]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_stats_text_and_json(tmp_path, clip, make_manifest, capsys):
    manifest = make_manifest(
        tmp_path / "m.jsonl", [GOOD, {**GOOD, "duration": 12.0, "language": "zh", "sentence": ""}]
    )
    assert main(["data", "stats", str(manifest)]) == 0
    text = capsys.readouterr().out
    assert "clips:       2" in text
    assert "languages:   Chinese 1, English 1" in text
    assert "no-speech:   1" in text
    assert "tokens/clip:" in text
    assert main(["data", "stats", str(manifest), "--json", "--no-tokens"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["clips"] == 2 and data["total_seconds"] == 14.0
    assert data["histogram"]["0-5 s"] == 1 and data["histogram"]["10-20 s"] == 1
    assert data["tokens_per_clip"] is None and data["measured"] == 1


def test_stats_bad_line(tmp_path, make_manifest, capsys):
    manifest = make_manifest(tmp_path / "m.jsonl", [GOOD, "[]"])
    assert main(["data", "stats", str(manifest)]) == 2
    assert f"error: {manifest}:2: expected a JSON object" in capsys.readouterr().err


def test_split(tmp_path, make_manifest, capsys):
    manifest = make_manifest(
        tmp_path / "m.jsonl", [{"audio": f"{i}.wav", "sentence": str(i)} for i in range(20)]
    )
    args = [
        "data",
        "split",
        str(manifest),
        "--train",
        str(tmp_path / "tr.jsonl"),
        "--test",
        str(tmp_path / "te.jsonl"),
        "--ratio",
        "0.75",
        "--seed",
        "7",
    ]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"train: 15 samples -> {tmp_path / 'tr.jsonl'}",
        f"test:  5 samples -> {tmp_path / 'te.jsonl'}",
    ]
    first = (tmp_path / "te.jsonl").read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(args + ["--force"]) == 0
    assert (tmp_path / "te.jsonl").read_bytes() == first


def test_from_folder(tmp_path, make_wav, capsys):
    make_wav(tmp_path / "d" / "a.wav", 1.0)
    (tmp_path / "d" / "a.txt").write_text("hi")
    make_wav(tmp_path / "d" / "b.wav", 1.0)
    out = tmp_path / "m.jsonl"
    assert (
        main(
            [
                "data",
                "from-folder",
                str(tmp_path / "d"),
                "--output",
                str(out),
                "--language",
                "English",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"no transcript, skipped: {tmp_path / 'd' / 'b.wav'}" in printed
    assert f"wrote 1 samples to {out}" in printed
    assert "1 audio files without a transcript were skipped" in printed
    assert json.loads(out.read_text())["language"] == "English"
    assert main(["data", "from-folder", str(tmp_path / "empty"), "--output", str(out)]) == 2


def test_from_tsv(tmp_path, make_wav, capsys):
    make_wav(tmp_path / "clips" / "a.mp3.wav", 1.0)
    table = tmp_path / "x.tsv"
    table.write_text("path\tsentence\tlocale\na.mp3.wav\thi\ten\nb.mp3\tgone\ten\n")
    out = tmp_path / "m.jsonl"
    assert main(["data", "from-tsv", str(table), "--output", str(out)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith(f"{table}:3: audio file not found: ")
    assert printed[1:] == [f"wrote 1 of 2 rows to {out}", "1 rows skipped"]


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "validate",
            [
                "--max-duration",
                "(default: 30.0)",
                "--tokenizer-json",
                "--fix-durations",
                "--force",
                "--no-check-tokens",
                "builtin:base",
            ],
        ),
        (
            "stats",
            ["--json", "--no-tokens", "--tokenizer-json", "(default: False)", "builtin:base"],
        ),
        (
            "split",
            [
                "--train",
                "--test",
                "--ratio",
                "(default: 0.9)",
                "--seed",
                "(default: 0)",
                "--force",
                "--by",
            ],
        ),
        (
            "from-folder",
            ["--output", "--language", "--text-ext", "(default: .txt)", "--transcripts", "--force"],
        ),
        (
            "from-tsv",
            [
                "--output",
                "--audio-dir",
                "--path-column",
                "(default: path)",
                "--text-column",
                "(default: sentence)",
                "--language-column",
                "(default: locale)",
                "--delimiter",
            ],
        ),
    ],
)
def test_help_explains_every_option(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["data", command, "--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for piece in expected:
        assert piece in text, piece


def test_data_without_subcommand_prints_help(capsys):
    assert main(["data"]) == 2
    out = capsys.readouterr().out
    for name in ("validate", "stats", "split", "from-folder", "from-tsv"):
        assert name in out


def test_real_speech_stats(shared_data, capsys):
    manifest = shared_data / "zh" / "aishell_s0150" / "manifest.jsonl"
    assert main(["data", "stats", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert "clips:       376" in out
    assert "total:       0.55 h (32.8 min)" in out
    assert "languages:   Chinese 376" in out
