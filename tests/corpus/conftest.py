"""One small local Ray instance for every corpus test (starting Ray takes ~15 s on 2 cores),
a tiny random Whisper (decoding mechanics, deterministic at temperature 0) and a few real
AISHELL clips plus one file that is not audio."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

SHARED_CLIPS = Path(__file__).resolve().parents[2].parent / "shared/data/zh/aishell_s0150/clips"
PACKAGED_CLIPS = Path(__file__).resolve().parents[2] / "src/whispertune/samples/aishell_s0150/clips"
# Bounded, deterministic decoding for a random model (it never stops on its own), as the
# serve tests use it.
TINY_DECODE = {
    "beam_size": 1,
    "temperatures": [0.0],
    "max_new_tokens": 24,
    "rescore": False,
    "language": "en",
}
TINY_FLAGS = [
    "--beam-size",
    "1",
    "--temperature",
    "0",
    "--max-new-tokens",
    "24",
    "--no-rescore",
    "--language",
    "en",
]


@pytest.fixture(scope="session")
def ray_address(tmp_path_factory) -> Iterator[str]:
    """A 2-CPU Ray instance with a 200 MB object store, shut down after the corpus tests; its
    address lets a CLI subprocess join it (the ``--address`` path)."""
    old_cache = os.environ.get("WHISPERTUNE_CACHE")  # conversions of the tiny model go here
    os.environ["WHISPERTUNE_CACHE"] = str(tmp_path_factory.mktemp("corpus-cache"))
    ray.init(
        num_cpus=2,
        object_store_memory=200 * 1024 * 1024,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old_cache is None:
            os.environ.pop("WHISPERTUNE_CACHE", None)
        else:
            os.environ["WHISPERTUNE_CACHE"] = old_cache


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random Whisper as a transformers directory (``hf``) beside its ct2 export."""
    from tests.backends.tiny_ct2 import make_tiny_ct2

    root = tmp_path_factory.mktemp("corpus-tiny")
    make_tiny_ct2(root)
    return root


@pytest.fixture(scope="session")
def clips() -> list[Path]:
    """Up to 5 real clips: the shared data when present, else the 3 packaged ones."""
    shared = sorted(SHARED_CLIPS.glob("*.opus"))[:5]
    return shared if len(shared) == 5 else sorted(PACKAGED_CLIPS.glob("*.opus"))


@pytest.fixture
def corpus_dir(tmp_path, clips) -> Path:
    """A folder of the clips (in a subfolder, to check recursion) and one broken file."""
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    for i, clip in enumerate(clips):
        target = folder / ("sub" if i % 2 else "") / clip.name
        shutil.copy(clip, target)
    (folder / "broken.wav").write_bytes(b"RIFF this is not audio" * 100)
    return folder
