"""Nothing lost, nothing silently wrong, driven as a user drives the CLI: one training run per
output directory (the second is refused naming the holder's PID, a dead holder's lock is taken
over), Ctrl-C twice exits at once and says how to resume, output locations of the wrong kind
are refused before any work, an OS error while writing keeps what was done, and the next run
on an output removes what a killed one left. Tiny models: mechanics, not quality."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.tiny import save_tiny_whisper
from tests.train.conftest import SAMPLES, write_manifest
from whispertune import staging
from whispertune.cli import main
from whispertune.train.checkpoint import checkpoint_problem, completed_checkpoints

CLIPS = sorted((SAMPLES / "clips").iterdir())[:2]
DECODE = ["--language", "zh", "--max-new-tokens", "4", "--threads", "1"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def adapter(tiny, tmp_path_factory) -> Path:
    """A LoRA adapter of the tiny model (what merge takes)."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    model = WhisperForConditionalGeneration.from_pretrained(tiny)
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    peft_model.peft_config["default"].base_model_name_or_path = str(tiny)
    out = tmp_path_factory.mktemp("adapter") / "adapter"
    peft_model.save_pretrained(out)
    return out


def _train_args(model: Path, manifest: Path, out: Path, steps: int) -> list[str]:
    return [
        "train", "--model", str(model), "--train", str(manifest), "--output", str(out),
        "--language", "Chinese", "--batch-size", "2", "--max-steps", str(steps),
        "--save-steps", "2", "--log-steps", "1", "--num-workers", "0", "--threads", "1",
        "--pack-seconds", "0",
    ]  # fmt: skip


def test_second_run_is_refused_and_ctrl_c_twice_exits_at_once(tiny, tmp_path, capsys):
    """A real training process holds the directory: a second ``train`` into it is refused
    with the holder's PID; then Ctrl-C twice stops the holder at once (exit 130, no
    traceback) with its newest checkpoint intact and the command that resumes it."""
    manifest = write_manifest(tmp_path / "m.jsonl", 8)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "whispertune", *_train_args(tiny, manifest, run, 400)]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    holder = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 300
        while not (run / "checkpoints/step-0000002").is_dir():
            assert holder.poll() is None and time.time() < deadline, "run ended early"
            time.sleep(0.05)
        for mode in ("--resume", "--force"):
            assert main(_train_args(tiny, manifest, run, 4) + [mode]) == 2
            err = capsys.readouterr().err
            assert f"another training run is using this directory (process {holder.pid}" in err
        holder.send_signal(signal.SIGINT)
        time.sleep(0.05)
        holder.send_signal(signal.SIGINT)
        sent = time.time()
        out, err = (s.decode() for s in holder.communicate(timeout=120))
        took = time.time() - sent
    finally:
        if holder.poll() is None:
            holder.kill()
    assert holder.returncode == 130, err[-3000:]
    assert "Traceback" not in err
    assert "resume with: whispertune train " in out and out.rstrip().endswith("--resume")
    newest = completed_checkpoints(run)[-1]
    # the second Ctrl-C lands mid-step ("interrupted") or, on a fast step, after the save
    said = (f"interrupted; newest checkpoint {newest}", f"; checkpoint {newest}")
    assert any(line in out for line in said), out
    assert checkpoint_problem(newest) is None
    assert took < 4, f"exit {took:.1f} s after the second Ctrl-C"  # 5.5 s before gc.freeze
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no interleaved or repeated lines
    assert not (run / ".lock").exists()


def test_lock_and_temporaries_left_by_a_dead_process_are_taken_over(tiny, tmp_path, capsys):
    manifest = write_manifest(tmp_path / "m.jsonl", 4)
    run = tmp_path / "run"
    run.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / ".lock").write_text(f"{dead.pid}\n")  # as a SIGKILLed run leaves it
    half = run / f".metrics.jsonl.write-{dead.pid}@{staging._HOST}-x1y2.tmp"
    half.write_text('{"step": 1')  # and its half-written temporary file

    assert main(["-q", *_train_args(tiny, manifest, run, 2)]) == 0
    assert (run / "best").is_dir() and not (run / ".lock").exists()
    assert not half.exists()


def _a_file(tmp_path: Path) -> Path:
    path = tmp_path / "file.txt"
    path.write_text("not a folder")
    return path


@pytest.mark.parametrize(
    "command",
    ["transcribe", "evaluate", "export-ct2", "export-ggml", "merge", "train"],
)
def test_output_under_a_file_is_refused_before_any_work(tiny, adapter, tmp_path, capsys, command):
    blocked = _a_file(tmp_path) / "x"
    manifest = write_manifest(tmp_path / "m.jsonl", 2)
    argv = {
        "transcribe": ["transcribe", str(CLIPS[0]), "--model", str(tiny),
                       "--output-dir", str(blocked), *DECODE],
        "evaluate": ["evaluate", "--manifest", str(manifest), "--model", str(tiny),
                     "--output", str(blocked / "r.jsonl"), *DECODE],
        "export-ct2": ["export", "ct2", "--model", str(tiny), "--output", str(blocked)],
        "export-ggml": ["export", "ggml", "--model", str(tiny), "--output", str(blocked)],
        "merge": ["merge", "--adapter", str(adapter), "--output", str(blocked)],
        "train": _train_args(tiny, manifest, blocked, 2),
    }[command]  # fmt: skip
    started = time.perf_counter()
    assert main(argv) == 2
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert err.startswith("error: --output") and "file.txt is a file" in err, err
    assert "Traceback" not in err
    assert seconds < 10, f"{command}: refused after {seconds:.1f} s (the work ran first?)"
    assert _a_file(tmp_path).read_text() == "not a folder"


def test_evaluate_prints_its_cer_when_the_output_cannot_be_written(
    tiny, tmp_path, capsys, monkeypatch
):
    manifest = write_manifest(tmp_path / "m.jsonl", 2)
    out = tmp_path / "res" / "utterances.jsonl"
    monkeypatch.setenv(staging.FAULT_ENV, str(out))  # the write fails as on a full disk
    argv = ["evaluate", "--manifest", str(manifest), "--model", str(tiny), "--output", str(out)]
    assert main([*argv, *DECODE]) == 1
    captured = capsys.readouterr()
    assert captured.out.startswith("CER: ") and "clips: 2" in captured.out
    assert "error: --output" in captured.err and "No space left on device" in captured.err
    assert "Traceback" not in captured.err
    assert list((tmp_path / "res").iterdir()) == []  # no half file, no temporary


def test_transcribe_goes_on_after_a_failed_write_and_names_the_failure(
    tiny, tmp_path, capsys, monkeypatch
):
    out = tmp_path / "out"
    monkeypatch.setenv(staging.FAULT_ENV, str(out / f"{CLIPS[0].stem}.srt"))
    argv = ["transcribe", *map(str, CLIPS), "--model", str(tiny), "--output-dir", str(out)]
    assert main([*argv, *DECODE, "--format", "srt"]) == 2
    captured = capsys.readouterr()
    assert f"{CLIPS[0]}: its text, not written to any file:" in captured.out  # not lost
    assert f"{CLIPS[1]}: wrote {out / CLIPS[1].stem}.srt" in captured.out  # went on
    assert f"error: 1 of 2 file(s) failed: {CLIPS[0]}" in captured.err
    assert sorted(p.name for p in out.iterdir()) == [f"{CLIPS[1].stem}.srt"]


_KILLED_EXPORT = """
import os, signal, sys
from pathlib import Path
from whispertune.staging import staging_dir
with staging_dir(Path(sys.argv[1]), ".ct2-export-") as work:
    (work / "model.bin").write_bytes(b"half a model")
    os.kill(os.getpid(), signal.SIGKILL)  # killed mid-export: the folder stays behind
"""


def test_next_export_removes_what_a_killed_export_left(tiny, tmp_path, capsys):
    output = tmp_path / "ct2"
    killed = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(output)])
    assert killed.returncode == -signal.SIGKILL
    (left,) = tmp_path.glob(".ct2.ct2-export-*")
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:  # a temporary folder of a run still going (another terminal) is left alone
        concurrent = tmp_path / f".ct2.ct2-export-{sleeper.pid}@{staging._HOST}-zz9"
        concurrent.mkdir()
        assert main(["-q", "export", "ct2", "--model", str(tiny), "--output", str(output)]) == 0
        assert not left.exists() and concurrent.is_dir()
        assert (output / "model.bin").is_file()
    finally:
        sleeper.kill()
        sleeper.wait()
