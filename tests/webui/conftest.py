"""A tiny Whisper and small manifests for the web UI's tests (mechanics, not quality)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

pytest.importorskip("gradio")

from tests.tiny import save_tiny_whisper  # noqa: E402
from tests.train.conftest import write_manifest  # noqa: E402

# Flags that make a tiny run take well under a second a step on one thread.
FAST_FLAGS = [
    "--language", "Chinese", "--batch-size", "2", "--log-steps", "1", "--num-workers", "0",
    "--threads", "1", "--pack-seconds", "0", "--warmup-steps", "0", "--save-steps", "2",
    "--no-speech-mix", "0",
]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session", autouse=True)
def own_cache(tmp_path_factory):
    """Encoder caches and converted models of these tests stay in a temporary folder (the
    training subprocesses inherit it)."""
    old = os.environ.get("WHISPERTUNE_CACHE")
    os.environ["WHISPERTUNE_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("WHISPERTUNE_CACHE", None)
    else:
        os.environ["WHISPERTUNE_CACHE"] = old


@pytest.fixture
def manifests(tmp_path) -> tuple[Path, Path]:
    """(train: 8 clips, eval: 2 clips) with absolute audio paths."""
    return (write_manifest(tmp_path / "train.jsonl", 8),
            write_manifest(tmp_path / "eval.jsonl", 2, start=8))


def train_argv(model: Path, train: Path, output: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--train", str(train), "--output", str(output),
            *FAST_FLAGS, *extra]


PYTHON = sys.executable
