"""A tiny random Whisper as a CTranslate2 directory, for tests of decoding mechanics."""

from __future__ import annotations

from pathlib import Path

from tests.tiny import save_tiny_whisper


def make_tiny_ct2(root: Path, seed: int = 0) -> Path:
    """``root/hf`` (transformers) exported to ``root/ct2`` (float32)."""
    from whispertune.export.ct2 import export_ct2

    hf = save_tiny_whisper(root / "hf", seed=seed)
    return export_ct2(str(hf), root / "ct2", quantization="float32", force=True)
