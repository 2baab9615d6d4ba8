"""``corpus transcribe`` on a local Ray instance: same texts as one process, broken files
recorded, a killed driver resumed without duplicates or losses, a valid manifest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.corpus.conftest import TINY_DECODE, TINY_FLAGS
from whispertune import api
from whispertune.backends.base import join_texts
from whispertune.backends.options import ModelOptions
from whispertune.cli import main
from whispertune.corpus import CorpusTranscribeOptions, transcribe_corpus
from whispertune.corpus.cluster import ClusterOptions
from whispertune.corpus.output import part_files, read_errors, read_part
from whispertune.corpus.transcribe import CRASH_ENV
from whispertune.options import build


def _options(inputs: list[str], output: Path, model: Path, **extra) -> CorpusTranscribeOptions:
    values = {"inputs": inputs, "output": output, "model": str(model), **TINY_DECODE, **extra}
    return build(CorpusTranscribeOptions, values, source="options")


def test_texts_equal_single_process_and_broken_file_is_recorded(
    ray_address, tiny_model, corpus_dir, tmp_path, capsys
):
    out = tmp_path / "out"
    # the transformers folder: converted to CTranslate2 once, on the driver
    opts = _options([str(corpus_dir)], out, tiny_model / "hf", srt=True, shard_size=2)
    opts.cluster = ClusterOptions(actors=2)
    result = transcribe_corpus(opts)

    audio = sorted(p.resolve() for p in corpus_dir.rglob("*.opus"))
    broken = (corpus_dir / "broken.wav").resolve()
    assert (result.files, result.transcribed, result.failed) == (len(audio) + 1, len(audio), 1)
    assert [e["path"] for e in read_errors(out)] == [str(broken)]
    assert "not a readable audio file" in read_errors(out)[0]["error"]

    rows = [json.loads(line) for line in result.manifest.read_text("utf-8").splitlines()]
    assert [r["audio"]["path"] for r in rows] == [str(p) for p in audio]  # input order, once
    model = api.load_model(ModelOptions(model=str(tiny_model / "hf"), threads=1))
    with model:
        for path, row in zip(audio, rows, strict=True):
            single = model.transcribe(path, **TINY_DECODE).result()
            assert row["sentence"] == single.text
            # the same text, cut into sentences a trainer takes (none of zero length)
            assert row["sentences"] or not single.segments
            assert join_texts(s["text"] for s in row["sentences"]) == single.text
            ends = [0.0] + [s["end"] for s in row["sentences"]]
            for s, previous_end in zip(row["sentences"], ends, strict=False):
                assert previous_end <= s["start"] < s["end"] <= row["duration"]
            assert row["duration"] == round(single.info.duration, 3)
            if single.segments:
                assert row["avg_logprob"] is not None and row["no_speech_prob"] is not None
    srt = sorted(p.name for p in (out / "files").iterdir())
    assert srt == sorted(f"{p.stem}.srt" for p in audio)

    assert main(["data", "validate", str(result.manifest)]) == 0
    assert "0 errors" in capsys.readouterr().out

    # a second run of the same command has nothing left to do
    again = transcribe_corpus(opts)
    assert (again.skipped, again.transcribed, again.failed) == (len(audio) + 1, 0, 0)
    assert sum(len(read_part(p)) for p in part_files(out)) == len(audio)


def _cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "whispertune", "-q", "corpus", "transcribe", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **env},
    )


def test_killed_driver_resumes_exactly_the_rest(ray_address, tiny_model, corpus_dir, tmp_path):
    out = tmp_path / "out"
    audio = sorted(str(p.resolve()) for p in corpus_dir.rglob("*.opus"))
    args = [
        str(corpus_dir / "**" / "*.opus"),
        "--output",
        str(out),
        "--format",
        "parquet",
        "--model",
        str(tiny_model / "ct2"),
        "--address",
        ray_address,
        "--actors",
        "1",
        "--shard-size",
        "1",
        *TINY_FLAGS,
    ]

    killed = _cli(args, {CRASH_ENV: "2"})  # the driver SIGKILLs itself after 2 shards
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    first = {r["audio"]["path"] for p in part_files(out) for r in read_part(p)}
    assert len(first) == 2 and not (out / "manifest.jsonl").exists()

    done = _cli(args, {})
    assert done.returncode == 0, done.stderr
    assert f"{len(audio) - 2} transcribed now, 2 done before, 0 failed" in done.stdout
    paths = [r["audio"]["path"] for p in part_files(out) for r in read_part(p)]
    assert sorted(paths) == audio  # each file once: none lost, none twice
    manifest = out / "manifest.jsonl"
    assert [json.loads(x)["audio"]["path"] for x in manifest.read_text().splitlines()] == audio
    assert main(["data", "validate", str(manifest)]) == 0
