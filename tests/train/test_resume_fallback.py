"""``train --resume`` when the newest checkpoint is damaged or gone, driven through the CLI: it
continues from the newest checkpoint that verifies and says which, ends with the weights of an
uninterrupted run, never rewrites an older checkpoint, never duplicates metrics; where no
checkpoint verifies it refuses instead of starting over on top of them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.train.conftest import write_manifest
from whispertune.cli import main
from whispertune.train.checkpoint import checkpoint_problem

ADAPTER = "adapter_model.safetensors"


def _train_args(model: Path, manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "train", "--model", str(model), "--train", str(manifest), "--output", str(out),
        "--language", "Chinese", "--batch-size", "2", "--max-steps", "6", "--save-steps", "2",
        "--log-steps", "1", "--num-workers", "0", "--threads", "1", "--warmup-steps", "2",
        "--save-total-limit", "20", "--pack-seconds", "0", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def finished_run(tiny_model, tmp_path_factory) -> tuple[Path, Path]:
    """One uninterrupted 6-step run (checkpoints at 2, 4, 6) and its manifest."""
    base = tmp_path_factory.mktemp("resume")
    manifest = write_manifest(base / "m.jsonl", 8)
    run = base / "whole"
    assert main(["-q", *_train_args(tiny_model, manifest, run)]) == 0
    return run, manifest


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def _damage(run: Path, how: str) -> None:
    newest = run / "checkpoints/step-0000006"
    if how == "deleted":
        shutil.rmtree(newest)
        return
    _truncate(newest / "training_state.pt")


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("how", ["truncated-state", "deleted"])
def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(
    tiny_model, tmp_path, finished_run, capsys, caplog, how
):
    whole, manifest = finished_run
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    _damage(run, how)
    older = {
        f"{p.parent.name}/{p.name}": (p.stat().st_mtime_ns, p.read_bytes())
        for p in (run / "checkpoints").glob("step-000000[24]/*")
    }
    capsys.readouterr()

    assert main(_train_args(tiny_model, manifest, run, "--resume")) == 0

    assert "Traceback" not in capsys.readouterr().err
    said = caplog.text  # the CLI shows these as "warning: ..." lines
    assert "resuming from step-0000004, the newest checkpoint that verifies" in said
    if how != "deleted":
        assert "step-0000006 is damaged" in said
        assert "training_state.pt" in said
        assert (run / "checkpoints/step-0000006.damaged").is_dir()  # kept for inspection
    for name, (mtime, data) in older.items():  # older checkpoints never rewritten
        p = run / "checkpoints" / name
        assert (p.stat().st_mtime_ns, p.read_bytes()) == (mtime, data), name
    assert _steps(run) == [1, 2, 3, 4, 5, 6]  # resumed lines replace, never duplicate
    assert (run / "latest").read_text().strip() == "step-0000006"
    a = load_file(str(whole / "checkpoints/step-0000006" / ADAPTER))
    b = load_file(str(run / "checkpoints/step-0000006" / ADAPTER))
    for name in a:  # the fallback loses nothing: the run ends where the whole one did
        assert torch.allclose(a[name], b[name], atol=1e-6), name


def test_resume_with_no_checkpoint_that_verifies_is_refused(
    tiny_model, tmp_path, finished_run, capsys
):
    whole, manifest = finished_run
    run = tmp_path / "run"
    shutil.copytree(whole, run)
    for checkpoint in (run / "checkpoints").glob("step-*"):
        (checkpoint / "training_state.pt").write_bytes(b"")
    metrics = (run / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert main(_train_args(tiny_model, manifest, run, "--resume")) == 2

    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "no checkpoint verifies" in err and "--force" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step-0000002.damaged",
        "step-0000004.damaged",
        "step-0000006.damaged",
    ]  # nothing deleted, nothing started over
    assert (run / "metrics.jsonl").read_text() == metrics


def test_a_checkpoint_verifies_only_when_every_file_is_whole(tmp_path, finished_run):
    whole, _ = finished_run
    checkpoint = tmp_path / "step-0000002"
    shutil.copytree(whole / "checkpoints/step-0000002", checkpoint)
    assert checkpoint_problem(checkpoint) is None
    _truncate(checkpoint / ADAPTER)
    assert ADAPTER in checkpoint_problem(checkpoint)
    shutil.copy(whole / "checkpoints/step-0000002" / ADAPTER, checkpoint / ADAPTER)
    (checkpoint / "trainer_state.json").write_text("{")
    assert "trainer_state.json" in checkpoint_problem(checkpoint)
