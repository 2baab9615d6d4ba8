"""Inputs and the missing-extra message: no Ray instance needed."""

from __future__ import annotations

import json
import sys

import pytest

from whispertune.cli import main
from whispertune.corpus.inputs import expand_inputs
from whispertune.errors import UserError


def test_files_folders_globs_and_manifests_expand_to_one_sorted_list(corpus_dir, tmp_path):
    audio = sorted(p.resolve() for p in corpus_dir.rglob("*.opus"))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(json.dumps({"audio": {"path": str(audio[0])}, "sentence": "x"}) + "\n")
    got = expand_inputs([str(corpus_dir), str(corpus_dir / "**" / "*.opus"), str(manifest)])
    assert got == sorted([*audio, (corpus_dir / "broken.wav").resolve()])
    assert expand_inputs([str(corpus_dir / "sub" / "*.opus")]) == [
        p for p in audio if p.parent.name == "sub"
    ]
    with pytest.raises(UserError, match="no such file"):
        expand_inputs([str(tmp_path / "missing.wav")])
    with pytest.raises(UserError, match="matches no audio"):
        expand_inputs([str(tmp_path / "*.flac")])


def test_without_ray_the_command_says_which_extra_to_install(
    corpus_dir, tmp_path, monkeypatch, capsys
):
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    code = main(["corpus", "transcribe", str(corpus_dir), "--output", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2
    assert "pip install 'whispertune[corpus]'" in err and "is missing" in err
