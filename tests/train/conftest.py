from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.tiny import save_tiny_whisper

SAMPLES = Path(__file__).resolve().parents[2] / "src/whispertune/samples/aishell_s0150"


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return save_tiny_whisper(tmp_path_factory.mktemp("tiny") / "model")


def write_manifest(path: Path, count: int, start: int = 0, **extra) -> Path:
    lines = (
        (SAMPLES / "train.jsonl").read_text(encoding="utf-8").splitlines()[start : start + count]
    )
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            obj = json.loads(line)
            obj["audio"]["path"] = str(SAMPLES / obj["audio"]["path"])
            obj.update(extra)
            fh.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


@pytest.fixture
def small_manifest(tmp_path) -> Path:
    return write_manifest(tmp_path / "train.jsonl", 8)
