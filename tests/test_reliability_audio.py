"""Audio that decodes only in part, driven through the CLI as a user meets it (issue 25).

A real FLAC (the shared JFK clip, 11 s) cut in half used to pass ``data validate`` (header
only), be scored by ``evaluate`` and trained on by ``train`` on the 5.4 s that decode, and a
text file renamed ``.flac`` was "transcribed" to five empty files with exit 0. Each command now
stops with an ``error:`` naming the file, ``--allow-partial-audio`` takes the decodable part
with a warning, and ``transcribe`` still does the other files.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import SHARED_DATA
from tests.tiny import save_tiny_whisper
from whispertune.cli import main

JFK = SHARED_DATA / "en/jfk/jfk.flac"
pytestmark = pytest.mark.skipif(not JFK.is_file(), reason=f"{JFK} not available")

FAST = ["--beam-size", "1", "--max-new-tokens", "4", "--temperature", "0"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture
def clips(tmp_path: Path) -> dict[str, Path]:
    """The real clip whole, the same clip cut in half, and a text file named .flac."""
    folder = tmp_path / "clips"
    folder.mkdir()
    whole = folder / "whole.flac"
    shutil.copyfile(JFK, whole)
    data = JFK.read_bytes()
    cut = folder / "cut.flac"
    cut.write_bytes(data[: len(data) // 2])
    text = folder / "notes.flac"
    text.write_text("meeting notes, not audio\n" * 20)
    return {"whole": whole, "cut": cut, "text": text}


def _manifest(path: Path, names: list[str]) -> Path:
    lines = [
        {"audio": {"path": f"clips/{n}.flac"}, "sentence": "and so my fellow americans"}
        for n in names
    ]
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


def test_validate_refuses_cut_and_fake_flac(tmp_path, clips, capsys):
    manifest = _manifest(tmp_path / "m.jsonl", ["whole", "cut", "notes"])
    assert main(["data", "validate", str(manifest), "--no-check-tokens"]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{manifest}:2: error: audio decodes only in part")
    assert str(clips["cut"]) in out[0] and "--allow-partial-audio" in out[0]
    assert out[1] == (
        f"{manifest}:3: error: no audio could be decoded from it (not an audio file?): "
        f"{clips['text']}"
    )
    assert out[2] == f"{manifest}: 3 lines, 2 errors, 0 warnings"

    # opted in: the cut file is a warning, the manifest passes; --decode-audio agrees
    manifest = _manifest(tmp_path / "m2.jsonl", ["whole", "cut"])
    flags = ["--no-check-tokens", "--allow-partial-audio", "--decode-audio"]
    assert main(["data", "validate", str(manifest), *flags]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{manifest}:2: warning: audio decodes only in part")
    assert out[1] == f"{manifest}: 2 lines, 0 errors, 1 warning"


def test_validate_flags_duplicate_lines(tmp_path, clips, capsys):
    manifest = tmp_path / "m.jsonl"
    line = {"audio": {"path": "clips/whole.flac"}, "sentence": "a"}
    lines = [
        line,
        {**line, "audio": {"path": "clips/../clips/whole.flac"}},
        {**line, "sentence": "b"},
    ]
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert main(["data", "validate", str(manifest), "--no-check-tokens"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"{manifest}:2: warning: duplicate of line 1 (same audio and transcript): the clip "
        "counts twice",
        f"{manifest}:3: warning: same audio as line 1 with another transcript: one of them is "
        "wrong",
        f"{manifest}: 3 lines, 0 errors, 2 warnings",
    ]


def test_evaluate_refuses_cut_flac_unless_allowed(tmp_path, clips, tiny, capsys, caplog):
    manifest = _manifest(tmp_path / "m.jsonl", ["whole", "cut"])
    args = ["evaluate", "--manifest", str(manifest), "--model", str(tiny), *FAST]
    args += ["--backend", "transformers", "--language", "en", "--json"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"error: {manifest}:2: {clips['cut']}: decoding failed" in captured.err
    assert "--allow-partial-audio" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # no score from half a clip

    assert main([*args, "--allow-partial-audio"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["clips"] == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if str(clips["cut"]) in w] == [
        f"{clips['cut']}: decoding failed part-way (Error : flac decoder lost sync.): cut short "
        "or damaged; using the part that decodes (--allow-partial-audio)"
    ]


def test_transcribe_reports_bad_files_and_does_the_others(tmp_path, clips, tiny, capsys):
    out = tmp_path / "out"
    args = ["transcribe", str(clips["cut"]), str(clips["text"]), str(clips["whole"])]
    args += ["--model", str(tiny), "--language", "en", "--output-dir", str(out), *FAST]
    args += ["--format", "txt", "--compute-type", "float32"]
    assert main(args) == 2
    captured = capsys.readouterr()
    assert f"{clips['cut']}: decoding failed part-way" in captured.err
    assert f"{clips['text']}: no audio could be decoded" in captured.err
    assert "Traceback" not in captured.err
    assert sorted(p.name for p in out.iterdir()) == ["whole.txt"]  # nothing for the bad two


def test_train_refuses_cut_flac(tmp_path, clips, tiny, capsys, monkeypatch):
    monkeypatch.setenv("WHISPERTUNE_CACHE", str(tmp_path / "cache"))
    manifest = _manifest(tmp_path / "m.jsonl", ["whole", "cut"])
    args = ["train", "--model", str(tiny), "--train", str(manifest)]
    args += ["--output", str(tmp_path / "run"), "--language", "English", "--batch-size", "2"]
    args += ["--max-steps", "1", "--num-workers", "0", "--threads", "1", "--pack-seconds", "0"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "error:" in err and str(clips["cut"]) in err and "--allow-partial-audio" in err
    assert "Traceback" not in err
