"""Shared fixtures: small real audio files written with soundfile, and the shared speech data."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


def write_wav(path: Path, seconds: float, sample_rate: int = 16000, freq: float = 440.0) -> Path:
    """A mono 16-bit WAV of a quiet sine, ``seconds`` long (0 gives a valid, empty WAV)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    sf.write(
        str(path),
        (0.1 * np.sin(2 * np.pi * freq * t)).astype("float32"),
        sample_rate,
        subtype="PCM_16",
    )
    return path


def write_jsonl(path: Path, lines: list) -> Path:
    """A manifest from objects (dumped as JSON) and raw strings (written as they are)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        for line in lines:
            fh.write(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False))
            fh.write("\n")
    return path


@pytest.fixture
def make_wav() -> Callable[..., Path]:
    return write_wav


@pytest.fixture
def make_manifest() -> Callable[[Path, list], Path]:
    return write_jsonl


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real speech data beside the repository (``../shared/data``); skips when absent."""
    if not (SHARED_DATA / "zh" / "aishell_s0150" / "manifest.jsonl").is_file():
        pytest.skip(f"shared speech data not found at {SHARED_DATA}")
    return SHARED_DATA
